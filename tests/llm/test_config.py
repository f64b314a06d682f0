"""Configs build the model they describe; a local pretrained Qwen2 loads through the real path."""

from __future__ import annotations

import io

import pytest
import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

from speech.config import ConfigError, load_config, resolve_config_text
from speech.llm.model import build_qwen2

from .conftest import make_batch

# Sections that need parts built elsewhere (text tokenizer file, data processors, trainer scheduler).
NOT_MODEL = {"text_tokenizer": None, "data_pipeline": None, "scheduler": None}


def _plain(path, overrides=None) -> dict:
    """The config as plain data (tags ignored), references resolved."""

    class Loose(yaml.SafeLoader):
        pass

    Loose.add_multi_constructor(
        "!",
        lambda loader, suffix, node: (
            loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else None
        ),
    )
    return yaml.load(io.StringIO(resolve_config_text(path, overrides)), Loader=Loose)


def test_full_config_has_cosyvoice2_dimensions(repo_root):
    cfg = _plain(repo_root / "configs/llm.yaml")
    qwen = cfg["qwen"]
    assert (
        qwen["hidden_size"],
        qwen["num_hidden_layers"],
        qwen["num_attention_heads"],
        qwen["num_key_value_heads"],
        qwen["intermediate_size"],
        qwen["vocab_size"],
        qwen["rope_theta"],
        qwen["tie_word_embeddings"],
    ) == (896, 24, 14, 2, 4864, 151936, 1e6, True)
    assert cfg["qwen_pretrain_path"] is None and cfg["speech_token_size"] == 6561
    with torch.device("meta"):  # no memory, no time: count the parameters of the backbone it describes
        n = sum(p.numel() for p in Qwen2ForCausalLM(Qwen2Config(**qwen)).parameters())
    assert n == 494_032_768  # Qwen2.5-0.5B with tied embeddings


def test_tiny_config_builds_and_trains_one_step(repo_root):
    cfg = load_config(repo_root / "configs/tiny/llm.yaml", NOT_MODEL)
    model = cfg["llm"].train()
    assert model.backbone.config._attn_implementation == "sdpa"
    batch = make_batch(text_len=[9, 5], speech_len=[60, 20], ref_len=[24000, 30000])
    batch["speech_token"] = torch.randint(0, 6561, batch["speech_token"].shape)
    out = model(batch)
    assert set(out) == {"loss", "acc"} and torch.isfinite(out["loss"])
    opt = cfg["optim"](model.parameters())
    out["loss"].backward()
    opt.step()


@pytest.mark.slow
def test_tiny_config_trains_on_batches_of_its_own_data_pipeline(repo_root, corpus_dir, tmp_path):
    """The whole file as train.py loads it: corpus -> index -> its data_pipeline -> batches -> loss.

    Speech tokens are synthetic (the FSQ tokenizer weights are not available here); text, audio,
    speaker references and every processor are the real ones.
    """
    pytest.importorskip("speech.dataset.processors")
    from speech.dataset import Dataset, read_index
    from speech.text import train_bpe
    from tests.dataset.synth import write_features
    from tools.generate_json_index import main as generate_index
    from tools.prepare_data import main as prepare

    assert (
        prepare([str(corpus_dir), "--out", str(tmp_path / "index"), "--split", str(corpus_dir / "splits/dev.txt")]) == 0
    )
    entries = list(read_index(tmp_path / "index/dev.jsonl"))
    for e in entries:
        write_features(e, tmp_path / "feat" / e["spk"], ratio=2, dim=8)
    assert (
        generate_index(
            [
                "--index",
                str(tmp_path / "index/dev.jsonl"),
                "--out",
                str(tmp_path / "train"),
                "--token_dir",
                str(tmp_path / "feat"),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    train_bpe([e["text"] for e in entries], vocab_size=500, min_frequency=1).save(str(tmp_path / "bpe.json"))

    overrides = {"text_tokenizer_path": str(tmp_path / "bpe.json")}
    try:
        import speech.trainer.scheduler  # noqa: F401
    except ImportError:  # the trainer has not landed on this branch yet
        overrides["scheduler"] = None
    cfg = load_config(repo_root / "configs/tiny/llm.yaml", overrides)
    assert cfg["text_tokenizer"].vocab_size <= cfg["text_vocab_size"]
    data_list = tmp_path / "train" / "data.list"
    batch = next(iter(Dataset(data_list, cfg["data_pipeline"], shuffle=False)))
    for key in ("text_token", "speech_token", "ref_audio"):
        assert batch[key].shape[0] == batch[key + "_len"].shape[0] == len(batch["utt"])
    model = cfg["llm"].train()
    out = model(batch)
    assert torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    out["loss"].backward()


def test_pretrained_directory_loads_through_the_config(repo_root, tmp_path):
    qwen = _plain(repo_root / "configs/tiny/llm.yaml")["qwen"]
    torch.manual_seed(3)
    saved = Qwen2ForCausalLM(Qwen2Config(**qwen))
    saved.save_pretrained(tmp_path / "qwen")
    cfg = load_config(repo_root / "configs/tiny/llm.yaml", {**NOT_MODEL, "qwen_pretrain_path": str(tmp_path / "qwen")})
    backbone = cfg["llm"].backbone
    assert backbone.config._attn_implementation == "sdpa" and backbone.dtype == torch.float32
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[name], tensor, rtol=0, atol=0)
    # A model that does not match the config dims still loads; the pretrained dims win.
    other = Qwen2ForCausalLM(Qwen2Config(**{**qwen, "hidden_size": 64, "intermediate_size": 96}))
    other.save_pretrained(tmp_path / "other")
    assert build_qwen2(tmp_path / "other", qwen).config.hidden_size == 64


@pytest.mark.parametrize("make", ["missing", "empty_dir"])
def test_missing_pretrained_path_is_one_clear_line(repo_root, tmp_path, make):
    path = tmp_path / "no_such_qwen"
    if make == "empty_dir":
        path.mkdir()
    with pytest.raises(ConfigError) as err:
        build_qwen2(path, {"hidden_size": 8})
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:  # the same through the config file, as train.py loads it
        load_config(repo_root / "configs/tiny/llm.yaml", {**NOT_MODEL, "qwen_pretrain_path": str(path)})
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_backbone_config_fails_fast():
    with pytest.raises(ConfigError):
        build_qwen2(None, None)
