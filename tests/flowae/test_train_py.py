"""flowae through the shared trainer on 1 and 2 processes, then its latents through the codec CLIs,
the index builder and the TTS's codec loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from flowae import extract_latents, inference
from flowae.checkpoint import build_flowae, codec_key, load_any_codec
from flowae.model import FlowAE

from .conftest import REPO, TINY


def _corpus_list(tmp_path: Path, n: int) -> Path:
    lines = []
    for wav in sorted((REPO / "data" / "wavs").glob("*/*.wav"))[:n]:
        lines.append(json.dumps({"utt": wav.stem, "spk": wav.parent.name, "wav": str(wav),
                                 "duration": sf.info(wav).duration}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "train.list").write_text("train.jsonl\n")
    return tmp_path / "train.list"


def _train(
    tmp_path: Path, model_dir: Path, launcher: tuple[str, ...] = (), cv: bool = True
) -> subprocess.CompletedProcess:
    init = tmp_path / "init.pt"
    if not init.exists():
        torch.manual_seed(0)
        torch.save(build_flowae(TINY).state_dict(), init)
    data = str(_corpus_list(tmp_path, 2))
    cmd = [*(launcher or (sys.executable,)), str(REPO / "train.py"), "--model", "flowae", "--config", str(TINY),
           "--train_data", data, *(("--cv_data", data) if cv else ()), "--model_dir", str(model_dir),
           "--comet_disabled",
           "--num_workers", "0", "--pretrained_model", str(init), "train_conf.max_steps=1",
           "train_conf.save_per_step=1", "train_conf.log_interval=1", "crop_seconds=0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_one_gan_free_step_through_train_py(tmp_path, nproc):
    launcher = () if nproc == 1 else (sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node", "2")
    model_dir = tmp_path / "exp"
    result = _train(tmp_path, model_dir, launcher, cv=nproc == 1)  # CV + media once is enough
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = model_dir / "step_000000001.pt"
    state = torch.load(ckpt, weights_only=True)
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    assert state["model"].keys() == init.keys()
    assert not all(torch.equal(state["model"][k], init[k]) for k in init)  # it learned
    assert list(state["optimizers"]) == ["default"] or len(state["optimizers"]) == 1  # one group: no GAN
    log = (model_dir / "train.log").read_text()
    assert "flow_mse" in log
    assert list((model_dir / "tensorboard").rglob("events.out.tfevents.*"))
    if nproc == 2:
        return
    # The saved config rebuilds it; encode -> <utt>_latentfae.pt + stats; index; decode; TTS loader.
    config = model_dir / "config.yaml"
    assert codec_key(config) == "flowae" and isinstance(load_any_codec(config, ckpt), FlowAE)
    lat = tmp_path / "lat"
    assert extract_latents.main(["--config", str(config), "--checkpoint", str(ckpt), "--index",
                                 str(tmp_path / "train.jsonl"), "--output_dir", str(lat), "--num_workers", "0",
                                 "--quiet"]) == 0
    files = sorted(lat.rglob("*_latentfae.pt"))
    assert len(files) == 2 and (lat / "latentfae_stats.json").is_file()
    record = torch.load(files[0], weights_only=True)
    assert {"mu", "logs", "sample_rate", "hop", "n_samples", "checkpoint"} <= set(record)
    assert record["mu"].shape[0] == 80 and record["hop"] == 480
    index = tmp_path / "index"
    subprocess.run([sys.executable, str(REPO / "tools/generate_json_index.py"), "--index",
                    str(tmp_path / "train.jsonl"), "--out", str(index), "--latent_dir", str(lat),
                    "--latent_suffix", "_latentfae.pt", "--require", "latents"], cwd=REPO, check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for p in index.rglob("*.jsonl") for line in p.read_text().splitlines() if line]
    assert len(rows) == 2 and all(r["latent_path"].endswith("_latentfae.pt") for r in rows)
    out = tmp_path / "wavs"
    assert inference.main(["decode", "--config", str(config), "--checkpoint", str(ckpt), "--inputs", str(files[0]),
                           "--output_dir", str(out), "--quiet"]) == 0
    wav, sr = sf.read(next(out.glob("*.wav")))
    assert sr == 24000 and len(wav) == record["n_samples"]
