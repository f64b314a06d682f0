"""Every pipeline of every shipped config bounds item length, the CV chains too: a dev list holding
one 10-minute utterance has it skipped (counted with its reason) and every other item yielded."""
from __future__ import annotations

import functools

import json
import math
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from speech.audio import save_audio
from speech.config import load_config
from speech.dataset import Dataset
from speech.dataset import processors as P

from .synth import SR, write_corpus, write_features

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*.yaml"), *REPO.glob("configs/tiny/*.yaml")])
PIPELINES = ("data_pipeline", "cv_data_pipeline")


def _top_level(path: Path) -> tuple[dict, dict]:
    """(tag of each top-level key, the plain values) of a config, nothing built."""
    text = path.read_text(encoding="utf-8")
    node = yaml.compose(text)
    tags = {k.value: v.tag for k, v in node.value}

    class Loose(yaml.SafeLoader):
        pass

    Loose.add_multi_constructor("!", lambda loader, suffix, node: None)
    return tags, yaml.load(text, Loader=Loose)


def build_pipelines(path: Path) -> dict:
    """Only the data/CV pipelines of a config: every other built object (models, tokenizers,
    optimizers) is overridden to None, so the full-size configs build in milliseconds."""
    tags, _ = _top_level(path)
    drop = {k: None for k, tag in tags.items() if k not in PIPELINES and tag.startswith("!")}
    conf = load_config(path, drop)
    return {k: conf[k] for k in PIPELINES if conf.get(k)}


class _Bytes:
    """Stand-in text tokenizer (the real one is dropped to None by :func:`build_pipelines`)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _with_stand_in_tokenizer(processor):
    keywords = getattr(processor, "keywords", None)
    if keywords is not None and "tokenizer" in keywords and keywords["tokenizer"] is None:
        return functools.partial(processor.func, *processor.args, **{**keywords, "tokenizer": _Bytes()})
    return processor


def test_every_config_is_checked():
    names = {Path(c).stem for c in CONFIGS}
    assert {"llm", "flow", "flow_3x", "fsq", "dac_vae", "dac_vae_3x"} <= names and len(CONFIGS) >= 10


@pytest.mark.parametrize("config", CONFIGS)
def test_every_pipeline_of_every_config_bounds_length(config):
    pipelines = build_pipelines(REPO / config)
    assert "data_pipeline" in pipelines
    for name, chain in pipelines.items():
        P.check_length_bound(chain, f"{config}: {name}")


def test_a_pipeline_without_a_length_bound_is_refused():
    with pytest.raises(ValueError, match="cv_data_pipeline has no length bound"):
        P.check_length_bound([P.load_speech_token, partial(P.batch, batch_type="static"), P.padding], "cv_data_pipeline")
    with pytest.raises(ValueError, match="no length bound"):  # an infinite bound is no bound
        P.check_length_bound([partial(P.filter_items, max_duration=math.inf), P.padding])
    with pytest.raises(ValueError, match="no length bound"):
        P.check_length_bound([partial(P.filter_items, max_duration=None)])
    P.check_length_bound([P.filter_items])  # the default max_duration (60 s) is a bound
    P.check_length_bound([partial(partial(P.random_crop, seconds=1.0), sample_rate=SR)])


@pytest.fixture(scope="module")
def dev_files(tmp_path_factory):
    """Two short utterances of one speaker plus one 10-minute silent one, with 2x/80-d and 3x/64-d
    token and latent files, written once."""
    root = tmp_path_factory.mktemp("long_dev")
    entries = write_corpus(root / "wavs", {"a": 2}, seconds=(1.0, 1.2))
    long_wav = root / "wavs" / "b" / "b_long.wav"
    save_audio(long_wav, torch.zeros(600 * SR), SR)
    entries.append({"utt": "b_long", "spk": "b", "wav": str(long_wav), "text": "ten minutes", "duration": 600.0})
    return root, entries


CV_CONFIGS = [c for c in CONFIGS if "cv_data_pipeline" in _top_level(REPO / c)[0]]


def test_the_cv_chains_are_the_expected_ones():
    # discovery guard: the shipped CV chains are all found (new configs join the list by themselves)
    assert {"flow", "flow_3x", "dac_vae", "dac_vae_3x", "dac_vae_frame", "flow_stream"} <= {Path(c).stem for c in CV_CONFIGS}


@pytest.mark.parametrize("config", CV_CONFIGS)
def test_a_ten_minute_dev_utterance_is_skipped_and_counted_by_the_cv_chain(config, dev_files):
    root, entries = dev_files
    _, plain = _top_level(REPO / config)
    ratio, dim = plain.get("token_latent_ratio", 2), plain.get("latent_dim", 80)
    feat = root / f"feat{ratio}x{dim}"
    index = [write_features(dict(e), feat, ratio=ratio, dim=dim) for e in entries]
    shard = root / f"{Path(config).stem}_{ratio}.jsonl"
    shard.write_text("".join(json.dumps(e) + "\n" for e in index))
    data_list = shard.with_suffix(".list")
    data_list.write_text(shard.name + "\n")
    cv = [_with_stand_in_tokenizer(p) for p in build_pipelines(REPO / config)["cv_data_pipeline"]]
    t0 = time.perf_counter()
    ds = Dataset(data_list, cv, shuffle=False, partition=False)
    utts = [u for batch in ds for u in batch["utt"]]
    elapsed = time.perf_counter() - t0
    assert sorted(utts) == ["a_000", "a_001"]
    reasons = dict(ds.skips.counts)
    assert len(reasons) == 1 and next(iter(reasons.values())) == 1, reasons
    assert next(iter(reasons)).startswith("duration outside"), reasons
    assert "b_long.wav" in next(iter(ds.skips.examples.values()))
    assert elapsed < 20, f"the CV chain took {elapsed:.1f} s over a 3-item list"


def test_train_py_refuses_an_unbounded_cv_chain_in_one_line(tmp_path, capsys):
    from speech.trainer.cli import main
    from tests.trainer.toy import write_corpus as write_toy_corpus

    data = write_toy_corpus(tmp_path / "data", [4])
    text = (REPO / "tests" / "trainer" / "toy.yaml").read_text()
    text += "cv_data_pipeline:\n  - !name:tests.trainer.toy.shuffle\n  - !name:tests.trainer.toy.batch\n"
    (tmp_path / "toy.yaml").write_text(text)
    args = ["--config", str(tmp_path / "toy.yaml"), "--trust_config", "--model", "toy", "--train_data", str(data),
            "--cv_data", str(data), "--model_dir", str(tmp_path / "exp"), "--comet_disabled"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cv_data_pipeline has no length bound" in err[0], err
