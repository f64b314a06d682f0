"""The whole road on the committed corpus: prepare_data → features → generate_json_index → a YAML
processor chain (hyperpyyaml ``!name:``) → DataLoader workers → batches with the contract's keys."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from speech.audio import load_audio
from speech.config import load_config
from speech.dataset import Dataset, read_index
from tools.generate_json_index import main as generate_index
from tools.prepare_data import main as prepare

from .synth import write_features

CONFIG = """
sample_rate: 24000
token_latent_ratio: 2
bpe_path: null
data_pipeline:
  - !name:speech.dataset.processors.tokenize_text
    tokenizer: !apply:speech.text.load_text_tokenizer [!ref <bpe_path>]
  - !name:speech.dataset.processors.filter_items
    max_duration: 20.0
  - !name:speech.dataset.processors.load_speech_token
  - !name:speech.dataset.processors.load_latent
    dim: 8
  - !name:speech.dataset.processors.align_lengths
    token_latent_ratio: !ref <token_latent_ratio>
  - !name:speech.dataset.processors.speaker_reference
    sample_rate: !ref <sample_rate>
    min_seconds: 1.0
    max_seconds: 2.0
  - !name:speech.dataset.processors.shuffle
    buffer_size: 50
  - !name:speech.dataset.processors.sort
    buffer_size: 20
    key: latent
  - !name:speech.dataset.processors.batch
    batch_type: dynamic
    max_frames_in_batch: 3000
    frame_key: latent
  - !name:speech.dataset.processors.padding
codec_pipeline:
  - !name:speech.dataset.processors.load_audio
    sample_rate: !ref <sample_rate>
  - !name:speech.dataset.processors.random_crop
    seconds: 0.5
    sample_rate: !ref <sample_rate>
  - !name:speech.dataset.processors.batch
    batch_type: static
    batch_size: 8
  - !name:speech.dataset.processors.padding
"""


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    assert (
        prepare([str(corpus_dir), "--out", str(root / "index"), "--split", str(corpus_dir / "splits" / "dev.txt")]) == 0
    )
    for e in read_index(root / "index" / "dev.jsonl"):
        write_features(e, root / "feat" / e["spk"], ratio=2, dim=8)
    args = [
        "--index",
        str(root / "index" / "dev.jsonl"),
        "--out",
        str(root / "train"),
        "--token_dir",
        str(root / "feat"),
    ]
    assert generate_index(args + ["--latent_dir", str(root / "feat"), "--num_shards", "2", "--num_workers", "0"]) == 0
    from speech.text import train_bpe

    texts = [e["text"] for e in read_index(root / "index" / "dev.jsonl")]
    train_bpe(texts, vocab_size=300, min_frequency=1).save(str(root / "bpe.json"))
    (root / "conf.yaml").write_text(CONFIG)
    return root


def test_yaml_pipeline_gives_contract_batches_with_workers(prepared, corpus_dir):
    conf = load_config(prepared / "conf.yaml", [f"bpe_path={prepared / 'bpe.json'}"])
    loader = DataLoader(
        Dataset(prepared / "train" / "data.list", conf["data_pipeline"]), batch_size=None, num_workers=2
    )
    utts = []
    for batch in loader:
        b = len(batch["utt"])
        utts += batch["utt"]
        assert set(batch) == {
            "utt",
            "spk",
            "text_token",
            "text_token_len",
            "speech_token",
            "speech_token_len",
            "latent",
            "latent_len",
            "ref_audio",
            "ref_audio_len",
            "ref_self_crop",
        }
        assert batch["ref_self_crop"].dtype == torch.bool and batch["ref_self_crop"].shape == (b,)
        assert batch["latent"].shape[:2] == (b, 8) and batch["latent"].shape[2] * b <= 3000
        assert (batch["speech_token_len"] * 2 == batch["latent_len"]).all()
        assert batch["latent_len"].max() == batch["latent"].shape[2]
        assert batch["speech_token"].dtype == batch["text_token"].dtype == torch.int64
        assert ((batch["ref_audio_len"] >= 0.6 * 24000) & (batch["ref_audio_len"] <= 2 * 24000)).all()
    assert sorted(utts) == sorted((corpus_dir / "splits" / "dev.txt").read_text().split())


def test_yaml_codec_pipeline_gives_fixed_crops(prepared):
    conf = load_config(prepared / "conf.yaml", [f"bpe_path={prepared / 'bpe.json'}"])
    batches = list(Dataset(prepared / "train" / "data.list", conf["codec_pipeline"]))
    wavs = {e["utt"]: e["wav"] for e in read_index(prepared / "index" / "dev.jsonl")}
    assert sum(len(b["utt"]) for b in batches) == 18
    for batch in batches:
        assert set(batch) == {"utt", "spk", "audio", "audio_len"}
        assert batch["audio"].shape[1] == 12000 and (batch["audio_len"] == 12000).all()  # every dev clip is > 0.5 s
        for utt, crop in zip(batch["utt"], batch["audio"], strict=False):
            full, _ = load_audio(wavs[utt], 24000)
            starts = torch.nonzero(full[: len(full) - 12000 + 1] == crop[0]).flatten().tolist()
            assert any(torch.equal(full[s : s + 12000], crop) for s in starts), (
                f"{utt}: the crop is not a window of its audio"
            )
