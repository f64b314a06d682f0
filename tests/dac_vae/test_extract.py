"""Latent extraction, statistics, --skip_existing, and decode / round trip through the CLIs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from dac_vae import extract_dac_latents, inference
from dac_vae.audio import load_wav
from dac_vae.checkpoint import build_codec, checkpoint_id, load_codec
from dac_vae.latents import length_batches, load_latent_file

from .conftest import REPO, TINY_CONFIGS, speech_like

SR = 24000
DURATIONS = {"spk1/a": 0.43, "spk1/b": 0.21, "spk2/c": 0.72, "spk2/d": 0.3}


def _setup(ratio: str, tmp_path: Path) -> dict:
    """A tiny codec checkpoint in the trainer's format, a corpus of 4 wavs and its index."""
    config = TINY_CONFIGS[ratio]
    torch.manual_seed(0)
    codec = build_codec(config)
    ckpt = tmp_path / "step_10.pt"
    torch.save({"model": codec.state_dict(), "step": 10}, ckpt)
    wav_dir = tmp_path / "wavs"
    lines = []
    for i, (name, seconds) in enumerate(DURATIONS.items()):
        path = wav_dir / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, speech_like(int(seconds * SR), seed=i).numpy(), SR, subtype="FLOAT")
        spk, utt = name.split("/")
        lines.append(json.dumps({"utt": utt, "spk": spk, "wav": f"wavs/{name}.wav", "duration": seconds}))
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join(lines) + "\n")
    return {"config": config, "ckpt": ckpt, "wavs": wav_dir, "index": index, "tmp": tmp_path, "ratio": ratio[0]}


@pytest.fixture(params=["2x", "3x"])
def both(request, tmp_path):
    """The setup for each stride set (hop 480 and hop 320)."""
    return _setup(request.param, tmp_path)


@pytest.fixture
def setup(tmp_path):
    """The setup for the default 2x codec."""
    return _setup("2x", tmp_path)


def _extract(s, *extra: str, out: str = "lat") -> int:
    return extract_dac_latents.main(
        [
            "--config",
            str(s["config"]),
            "--checkpoint",
            str(s["ckpt"]),
            "--index",
            str(s["index"]),
            "--output_dir",
            str(s["tmp"] / out),
            "--num_workers",
            "0",
            "--batch_seconds",
            "2.5",
            "--quiet",
            *extra,
        ]
    )


def test_extraction_writes_the_documented_format_and_statistics(both):
    s = both
    assert _extract(s) == 0
    codec = load_codec(s["config"], s["ckpt"])
    suffix = f"_latent{s['ratio']}x"
    files = sorted((s["tmp"] / "lat").rglob("*.pt"))
    assert [f.relative_to(s["tmp"] / "lat").as_posix() for f in files] == [
        f"spk1/a{suffix}.pt",
        f"spk1/b{suffix}.pt",
        f"spk2/c{suffix}.pt",
        f"spk2/d{suffix}.pt",
    ]
    all_mu = []
    for name in DURATIONS:
        spk, utt = name.split("/")
        record = torch.load(s["tmp"] / "lat" / spk / f"{utt}{suffix}.pt", weights_only=True)
        assert set(record) == {"mu", "logs", "sample_rate", "hop", "n_samples", "checkpoint"}
        wav = load_wav(s["wavs"] / f"{name}.wav", SR)
        t = math.ceil(wav.shape[0] / codec.hop)
        assert record["mu"].dtype == record["logs"].dtype == torch.float32
        assert record["mu"].shape == record["logs"].shape == (codec.latent_dim, t)
        assert (record["sample_rate"], record["hop"], record["n_samples"]) == (SR, codec.hop, wav.shape[0])
        assert record["checkpoint"] == checkpoint_id(s["ckpt"]) and record["checkpoint"].startswith("step_10.pt@")
        # batched extraction equals encoding the utterance alone
        with torch.no_grad():
            mu, logs, _ = codec.encode(wav.unsqueeze(0))
        torch.testing.assert_close(record["mu"], mu[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(record["logs"], logs[0], atol=1e-5, rtol=1e-4)
        all_mu.append(record["mu"])
    stats = json.loads((s["tmp"] / "lat" / f"latent{s['ratio']}x_stats.json").read_text())
    frames = torch.cat(all_mu, dim=1).double()
    assert stats["n_utts"] == 4 and stats["n_frames"] == frames.shape[1]
    assert (stats["latent_dim"], stats["hop"], stats["sample_rate"]) == (codec.latent_dim, codec.hop, SR)
    torch.testing.assert_close(torch.tensor(stats["mean"], dtype=torch.float64), frames.mean(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        torch.tensor(stats["std"], dtype=torch.float64), frames.std(1, unbiased=False), atol=1e-6, rtol=1e-5
    )


def test_skip_existing_leaves_files_untouched_and_fills_gaps(setup, capsys):
    s = setup
    assert _extract(s) == 0
    lat = s["tmp"] / "lat"
    files = sorted(lat.rglob("*.pt"))
    stats_file = next(lat.glob("*_stats.json"))
    first_stats = json.loads(stats_file.read_text())
    removed = files[0]
    removed.unlink()
    kept = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files[1:]}
    assert _extract(s, "--skip_existing") == 0
    for f, (mtime, data) in kept.items():
        assert f.stat().st_mtime_ns == mtime and f.read_bytes() == data
    assert removed.is_file()  # the gap was filled
    assert json.loads(stats_file.read_text())["n_utts"] == 4  # kept files still count in the statistics
    torch.testing.assert_close(
        torch.tensor(json.loads(stats_file.read_text())["mean"]), torch.tensor(first_stats["mean"])
    )
    # Files of another checkpoint are kept too, but reported.
    torch.save({"model": build_codec(s["config"]).state_dict()}, s["tmp"] / "other.pt")
    assert (
        extract_dac_latents.main(
            [
                "--config",
                str(s["config"]),
                "--checkpoint",
                str(s["tmp"] / "other.pt"),
                "--index",
                str(s["index"]),
                "--output_dir",
                str(lat),
                "--num_workers",
                "0",
                "--quiet",
                "--skip_existing",
            ]
        )
        == 0
    )
    assert "kept existing 4 (4 from another checkpoint!)" in capsys.readouterr().err
    for f, (mtime, data) in kept.items():
        assert f.stat().st_mtime_ns == mtime and f.read_bytes() == data
    # Without --skip_existing every file is rewritten.
    assert _extract(s) == 0
    assert any(f.stat().st_mtime_ns != mtime for f, (mtime, _) in kept.items())


def test_bad_inputs_are_skipped_and_counted(setup, capsys, caplog):
    s = setup
    (s["wavs"] / "spk1" / "broken.wav").write_bytes(b"RIFF not really a wav")
    with s["index"].open("a") as f:
        f.write(json.dumps({"utt": "broken", "spk": "spk1", "wav": "wavs/spk1/broken.wav"}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"utt": "missing", "wav": "wavs/none.wav"}) + "\n")
    assert _extract(s) == 0
    assert len(list((s["tmp"] / "lat").rglob("*.pt"))) == 4
    err = capsys.readouterr().err
    assert "extracted 4, kept existing 0, failed 2, bad index entries 1" in err  # broken + missing wav, bad JSON
    logged = caplog.text
    assert "broken.wav: cannot decode" in logged and "none.wav: file not found" in logged and "bad index line" in logged


def test_folder_input_and_default_location_beside_the_wavs(setup):
    s = setup
    assert (
        extract_dac_latents.main(
            [
                "--config",
                str(s["config"]),
                "--checkpoint",
                str(s["ckpt"]),
                "--index",
                str(s["wavs"]),
                "--num_workers",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    suffix = f"_latent{s['ratio']}x.pt"
    for name in DURATIONS:
        assert (s["wavs"] / f"{name}{suffix}").is_file()
    assert (s["wavs"] / f"latent{s['ratio']}x_stats.json").is_file()


def test_decode_of_extracted_files_reproduces_the_round_trip(both):
    s = both
    assert _extract(s) == 0
    common = ["--config", str(s["config"]), "--checkpoint", str(s["ckpt"]), "--batch_seconds", "3", "--quiet"]
    assert (
        inference.main(["decode", *common, "--inputs", str(s["tmp"] / "lat"), "--output_dir", str(s["tmp"] / "dec")])
        == 0
    )
    assert inference.main(["roundtrip", *common, "--inputs", str(s["wavs"]), "--output_dir", str(s["tmp"] / "rt")]) == 0
    for name in DURATIONS:
        utt = name.split("/")[1]
        dec, sr1 = sf.read(s["tmp"] / "dec" / f"{utt}.wav", dtype="int16")
        rt, sr2 = sf.read(s["tmp"] / "rt" / f"{utt}.wav", dtype="int16")
        assert sr1 == sr2 == SR and dec.shape == rt.shape == (int(DURATIONS[name] * SR),)
        assert abs(dec.astype(int) - rt.astype(int)).max() <= 1  # equal up to 16-bit rounding
    # And in floating point, through the Python API.
    codec = load_codec(s["config"], s["ckpt"])
    record = load_latent_file(s["tmp"] / "lat" / "spk2" / f"c_latent{s['ratio']}x.pt")
    wav = load_wav(s["wavs"] / "spk2" / "c.wav", SR)
    device = torch.device("cpu")
    decoded = inference.decode_latents(codec, [record["mu"]], [record["n_samples"]], device)[0]
    round_trip = inference.roundtrip(codec, [wav, wav[:5000]], device)[0]
    torch.testing.assert_close(decoded, round_trip, atol=1e-5, rtol=1e-4)


def test_encode_subcommand_writes_latent_files(setup):
    s = setup
    common = ["--config", str(s["config"]), "--checkpoint", str(s["ckpt"]), "--quiet"]
    assert (
        inference.main(["encode", *common, "--inputs", str(s["wavs"] / "spk1"), "--output_dir", str(s["tmp"] / "enc")])
        == 0
    )
    names = sorted(p.name for p in (s["tmp"] / "enc").iterdir())
    assert names == [f"a_latent{s['ratio']}x.pt", f"b_latent{s['ratio']}x.pt"]
    assert load_latent_file(s["tmp"] / "enc" / names[0])["n_samples"] == int(DURATIONS["spk1/a"] * SR)


def test_missing_checkpoint_fails_in_one_line(setup, capsys):
    s = setup
    code = extract_dac_latents.main(
        ["--config", str(s["config"]), "--checkpoint", str(s["tmp"] / "nope.pt"), "--index", str(s["index"])]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"error: codec checkpoint not found: {s['tmp'] / 'nope.pt'}"


def test_length_batches_respect_the_budget():
    lengths = [5, 100, 7, 60, 30, 30, 2]
    batches = length_batches(lengths, max_total=120, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) == 1 or len(b) * longest <= 120)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'dac_vae.extract_dac_latents' found in sys.modules:RuntimeWarning")
def test_script_and_module_entry_points_and_torchrun_sharding(tmp_path, monkeypatch):
    """``python -m dac_vae.extract_dac_latents`` (run in-process) and the script under torchrun
    (``dac-vae/extract_dac_latents.py``, 2 ranks) write the same files and statistics."""
    import runpy

    s = _setup("2x", tmp_path)
    args = [
        "--config",
        str(s["config"]),
        "--checkpoint",
        str(s["ckpt"]),
        "--index",
        str(s["index"]),
        "--num_workers",
        "0",
        "--quiet",
    ]
    monkeypatch.setattr(sys, "argv", ["extract_dac_latents", *args, "--output_dir", str(tmp_path / "one")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dac_vae.extract_dac_latents", run_name="__main__")
    assert exit_info.value.code == 0
    sharded = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "dac-vae" / "extract_dac_latents.py"),
            *args,
            "--output_dir",
            str(tmp_path / "two"),
        ],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sharded.returncode == 0, sharded.stderr
    assert "rank 0/2: extracted 2" in sharded.stderr and "rank 1/2: extracted 2" in sharded.stderr
    one_files = sorted((tmp_path / "one").rglob("*.pt"))
    assert len(one_files) == 4
    for f in one_files:
        a = torch.load(f, weights_only=True)
        b = torch.load(tmp_path / "two" / f.relative_to(tmp_path / "one"), weights_only=True)
        torch.testing.assert_close(a["mu"], b["mu"], atol=1e-5, rtol=1e-4)
    one = json.loads((tmp_path / "one" / "latent2x_stats.json").read_text())
    two = json.loads((tmp_path / "two" / "latent2x_stats.json").read_text())
    assert one["n_frames"] == two["n_frames"] and one["n_utts"] == two["n_utts"] == 4
    torch.testing.assert_close(torch.tensor(one["mean"]), torch.tensor(two["mean"]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(one["std"]), torch.tensor(two["std"]), atol=1e-6, rtol=1e-5)
