"""The codec through the shared trainer: ``train.py --model dac_vae`` on the tiny config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from dac_vae import extract_dac_latents
from dac_vae.checkpoint import build_codec

from .conftest import REPO, TINY_CONFIGS


def _corpus_list(tmp_path: Path, n: int) -> Path:
    """A data.list over ``n`` utterances of the committed corpus."""
    lines = []
    for wav in sorted((REPO / "data" / "wavs").glob("*/*.wav"))[:n]:
        lines.append(
            json.dumps({"utt": wav.stem, "spk": wav.parent.name, "wav": str(wav), "duration": sf.info(wav).duration})
        )
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "train.list").write_text("train.jsonl\n")
    return tmp_path / "train.list"


def _train(tmp_path: Path, model_dir: Path, *extra: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    init = tmp_path / "init.pt"
    if not init.exists():
        torch.manual_seed(0)
        torch.save(build_codec(TINY_CONFIGS["2x"]).state_dict(), init)
    cmd = [
        *(launcher or (sys.executable,)),
        str(REPO / "train.py"),
        "--model",
        "dac_vae",
        "--config",
        str(TINY_CONFIGS["2x"]),
        "--train_data",
        str(_corpus_list(tmp_path, 2)),
        "--model_dir",
        str(model_dir),
        "--comet_disabled",
        "--num_workers",
        "0",
        "--pretrained_model",
        str(init),
        "train_conf.max_steps=2",
        "train_conf.save_per_step=1",
        "train_conf.log_interval=1",
        "dac_vae.disc_start_step=1",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    disc = {k: v for k, v in state.items() if k.startswith("discriminator.")}
    gen = {k: v for k, v in state.items() if not k.startswith("discriminator.")}
    return gen, disc


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_gan_steps_through_train_py_on_two_ranks_then_extract_with_the_saved_config(tmp_path):
    """``torchrun train.py --model dac_vae`` on 2 gloo ranks (DDP with find_unused_parameters: each
    group's call leaves the other group unused): step 0 is the discriminator warm-up, step 1 a full
    GAN step; the checkpoint and the config the trainer saves beside it are all extraction needs."""
    model_dir = tmp_path / "exp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    result = _train(tmp_path, model_dir, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    init_gen, init_disc = _split(torch.load(tmp_path / "init.pt", weights_only=True))
    ckpts = sorted(model_dir.glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_000000001.pt", "step_000000002.pt"]
    first = torch.load(ckpts[0], weights_only=True)
    assert set(first["optimizers"]) == {"generator", "discriminator"}
    gen1, disc1 = _split(first["model"])
    gen2, disc2 = _split(torch.load(ckpts[1], weights_only=True)["model"])
    assert _same(disc1, init_disc) and not _same(gen1, init_gen)  # warm-up: only the generator learned
    assert not _same(disc2, disc1) and not _same(gen2, gen1)  # GAN step: both learned
    log = (model_dir / "train.log").read_text()
    step1 = next(line for line in log.splitlines() if " step 1 |" in line)
    step2 = next(line for line in log.splitlines() if " step 2 |" in line)
    assert "generator/adversarial" not in step1 and "generator/mel" in step1
    assert "generator/adversarial" in step2 and "discriminator/discriminator" in step2

    code = extract_dac_latents.main(
        [
            "--config",
            str(model_dir / "config.yaml"),
            "--checkpoint",
            str(ckpts[1]),
            "--index",
            str(tmp_path / "train.jsonl"),
            "--output_dir",
            str(tmp_path / "lat"),
            "--num_workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 0 and len(list((tmp_path / "lat").rglob("*_latent2x.pt"))) == 2
