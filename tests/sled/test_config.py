"""configs/tiny/sled.yaml as train.py loads it: corpus -> index -> data_pipeline -> batch -> loss,
and one real train.py run with --model sled."""

from __future__ import annotations

import torch

from speech.config import load_config


def test_tiny_config_pipeline_and_train_py(corpus_dir, repo_root, tmp_path):
    from speech.dataset import Dataset, read_index
    from speech.text import train_bpe
    from speech.trainer.cli import main as train_main
    from tests.dataset.synth import write_features
    from tools.generate_json_index import main as generate_index
    from tools.prepare_data import main as prepare

    assert prepare([str(corpus_dir), "--out", str(tmp_path / "index"), "--split",
                    str(corpus_dir / "splits/dev.txt")]) == 0
    entries = list(read_index(tmp_path / "index/dev.jsonl"))[:6]
    for e in entries:
        write_features(e, tmp_path / "feat" / e["spk"], ratio=2, dim=8)
    index = tmp_path / "index/small.jsonl"
    index.write_text("".join(__import__("json").dumps(e) + "\n" for e in entries))
    assert generate_index(["--index", str(index), "--out", str(tmp_path / "train"), "--token_dir",
                           str(tmp_path / "feat"), "--latent_dir", str(tmp_path / "feat"), "--num_workers", "0"]) == 0
    train_bpe([e["text"] for e in entries], vocab_size=300, min_frequency=1).save(str(tmp_path / "bpe.json"))
    overrides = {"text_tokenizer_path": str(tmp_path / "bpe.json"), "latent_dim": 8}
    cfg = load_config(repo_root / "configs/tiny/sled.yaml", overrides)
    data_list = tmp_path / "train" / "data.list"
    batch = next(iter(Dataset(data_list, cfg["data_pipeline"], shuffle=False)))
    assert batch["latent"].shape[1] == 8 and batch["latent"].shape[0] == len(batch["utt"])
    out = cfg["sled"].train()(batch)
    assert torch.isfinite(out["loss"]) and 0 <= out["stop_recall"] <= 1 and 0 <= out["stop_precision"] <= 1
    out["loss"].backward()

    model_dir = tmp_path / "exp"
    rc = train_main(["--model", "sled", "--config", str(repo_root / "configs/tiny/sled.yaml"),
                     "--train_data", str(data_list), "--cv_data", str(data_list), "--model_dir", str(model_dir),
                     "--comet_disabled", "--num_workers", "0", "text_tokenizer_path=" + str(tmp_path / "bpe.json"),
                     "latent_dim=8", "train_conf.max_steps=2", "train_conf.max_epoch=1", "qwen.num_hidden_layers=1"])
    assert rc == 0
    assert (model_dir / "config.yaml").is_file() and list(model_dir.glob("*.pt"))
