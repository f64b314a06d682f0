"""The evaluator and the CLI: aggregation, skips, outputs (fast doubles for ASR/speaker; one real run)."""

from __future__ import annotations

import json
import math
import shlex
import sys

import pytest
import soundfile as sf
import torch

from speech.audio import save_audio
from speech.eval.asr import ASR
from speech.eval.degrade import DEGRADATIONS
from speech.eval.evaluator import Evaluator, codec_source, degraded_source, hyp_dir_source, reference_source
from speech.eval.reflist import RefItem, read_ref_list
from speech.eval.report import markdown_table
from speech.eval.speaker import SpeakerEncoder
from tools.evaluate import main


class _ScriptedASR(ASR):
    """Returns scripted transcripts in call order (a test double for the recogniser)."""

    def __init__(self, outputs: list[str]):
        self.outputs = list(outputs)

    def transcribe(self, wav: torch.Tensor) -> str:
        return self.outputs.pop(0)


class _EnergyEncoder(SpeakerEncoder):
    """Embedding = (rms, peak, 1): identical audio gives SIM 1, a quieter copy less."""

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        v = torch.stack([wav.pow(2).mean().sqrt(), wav.abs().amax() * 0.1, torch.tensor(0.05)])
        return v / v.norm()


def test_summary_aggregates_per_utterance_rows(test_items, tmp_path) -> None:
    items = test_items[:3]
    refs = [i.text for i in items]
    # utterance 0 right, 1 with one substitution, 2 with everything deleted
    first, *rest = refs[1].split()
    asr = _ScriptedASR([refs[0], " ".join(["wrong", *rest]), ""])
    ev = Evaluator(("codec", "wer", "sim"), 24000, asr=asr, speaker=_EnergyEncoder())
    result = ev.evaluate(items, reference_source, "ref", progress=False)
    wers = [row["wer"] for row in result.rows]
    n_words = [len(r.split()) for r in refs]
    assert wers[0] == 0.0 and wers[1] == pytest.approx(1 / n_words[1]) and wers[2] == 1.0
    assert result.summary["wer"] == pytest.approx(sum(wers) / 3)
    assert result.summary["wer_corpus"] == pytest.approx((1 + n_words[2]) / sum(n_words))
    assert result.summary["sim"] == pytest.approx(1.0)
    assert result.summary["pesq_wb"] == pytest.approx(4.64, abs=0.01)
    assert result.summary["n"] == 3 and not result.skipped


def test_unreadable_test_audio_is_skipped_and_counted(test_items, tmp_path) -> None:
    items = test_items[:3]
    hyp = tmp_path / "hyp"
    save_audio(hyp / f"{items[0].utt}.wav", torch.zeros(0), 24000)  # empty file body: no samples
    (hyp / f"{items[1].utt}.wav").write_bytes(b"RIFF garbage")  # undecodable
    save_audio(hyp / f"{items[2].utt}.wav", torch.randn(16000) * 0.1, 16000)  # fine, other rate
    ev = Evaluator(("codec",), 24000)
    result = ev.evaluate(items, hyp_dir_source(hyp, 24000), "sys", progress=False)
    assert [row["utt"] for row in result.rows] == [items[2].utt]
    assert sum(result.skipped.values()) == 2
    assert result.rows[0]["hyp_s"] == pytest.approx(1.0)  # resampled 16 kHz -> 24 kHz keeps the duration
    missing = ev.evaluate(items[:1], hyp_dir_source(tmp_path / "nowhere", 24000), "none", progress=False)
    assert missing.rows == [] and missing.skipped == {"test audio: file not found": 1}
    assert math.isnan(missing.summary.get("pesq_wb", float("nan")))


def test_degraded_source_is_seeded_per_utterance(test_items, load) -> None:
    src = degraded_source(DEGRADATIONS["noise20db"], 24000, seed=0)
    a, b = test_items[0], test_items[1]
    wa, wb = load(a), load(b)
    assert torch.equal(src(a, wa), src(a, wa))  # same utterance, same noise whatever the order
    assert not torch.equal(src(a, wa)[:1000] - wa[:1000], src(b, wb)[:1000] - wb[:1000])


def test_evaluator_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown metric group"):
        Evaluator(("codec", "mcd"))
    with pytest.raises(ValueError, match="needs an ASR backend"):
        Evaluator(("wer",))


def test_markdown_table_shows_present_columns_only() -> None:
    from speech.eval.evaluator import SystemResult

    rows = [SystemResult("a", summary={"n": 2, "wer": 0.125, "sim": float("nan")}), SystemResult("b", summary={"n": 1})]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| system | n | WER % ↓ | SIM ↑ |"
    assert table[2] == "| a | 2 | 12.50 | – |"
    assert table[3] == "| b | 1 | – | – |"


@pytest.mark.slow
def test_cli_end_to_end_on_the_corpus(corpus_dir, tmp_path, capsys) -> None:
    # Two short utterances, one line in each reference-list format.
    refs = tmp_path / "refs.tsv"
    wavs = corpus_dir / "wavs" / "awb"
    refs.write_text(
        f"awb_001\t{wavs / 'awb_001.wav'}\t{(wavs / 'awb_001.txt').read_text().strip()}\n"
        + json.dumps({"utt": "awb_002", "wav": str(wavs / "awb_002.wav"), "text": (wavs / "awb_002.txt").read_text()})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "eval"
    argv = ["--ref_list", str(refs), "--degrade", "clean,noise10db", "--metrics", "codec,wer,sim"]
    code = main([*argv, "--out_dir", str(out), "--no_progress", "--save_degraded"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| clean | 2 |" in printed and "| noise10db | 2 |" in printed
    data = json.loads((out / "results.json").read_text())
    clean, noisy = (s["summary"] for s in data["systems"])
    assert clean["pesq_wb"] > 4.5 > noisy["pesq_wb"]
    assert clean["si_sdr"] > 60 and noisy["si_sdr"] == pytest.approx(10.0, abs=0.5)
    assert clean["sim"] == pytest.approx(1.0, abs=1e-5) and noisy["sim"] < 1.0
    assert clean["wer"] <= noisy["wer"]
    assert len(data["systems"][0]["utterances"]) == 2 and "hyp_text" in data["systems"][0]["utterances"][0]
    assert (out / "results.md").read_text().count("\n| ") == 3
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"pesq_wb.png", "wer.png", "sim.png"}
    assert len(list((out / "degraded" / "noise10db").glob("*.wav"))) == 2
    # the saved degraded copies score like the in-memory ones when read back as a system
    hyp = str(out / "degraded" / "noise10db")
    again_dir = tmp_path / "again"
    code = main(
        ["--ref_list", str(refs), "--metrics", "codec", "--hyp_dir", hyp, "--out_dir", str(again_dir), "--no_plots"]
    )
    again = json.loads((again_dir / "results.json").read_text())["systems"][0]["summary"]
    assert not (again_dir / "plots").exists()
    assert again["si_sdr"] == pytest.approx(noisy["si_sdr"], abs=0.1)  # 16-bit PCM rounding only


def test_cli_refuses_nothing_to_score(corpus_dir, tmp_path) -> None:
    with pytest.raises(SystemExit, match="nothing to score"):
        main(["--corpus", str(corpus_dir), "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown ASR backend"):
        main(["--corpus", str(corpus_dir), "--with_reference", "--asr", "kaldi", "--out_dir", str(tmp_path)])


def test_cli_times_a_synthesis_command_for_rtf(corpus_dir, tmp_path, capsys) -> None:
    wavs = corpus_dir / "wavs" / "awb"
    refs = tmp_path / "refs.tsv"
    refs.write_text("".join(f"{u}\t{wavs / u}.wav\n" for u in ("awb_001", "awb_002")), encoding="utf-8")
    hyp = tmp_path / "synth"
    # a stand-in "synthesiser": copies the references into the output folder
    script = f"import shutil, os; os.makedirs({str(hyp)!r}, exist_ok=True); " + "; ".join(
        f"shutil.copy({str(wavs / u) + '.wav'!r}, {str(hyp / u) + '.wav'!r})" for u in ("awb_001", "awb_002")
    )
    cmd = f"{sys.executable} -c {shlex.quote(script)}"
    argv = ["--ref_list", str(refs), "--metrics", "codec", "--hyp_dir", str(hyp), "--synth_cmd", cmd, "--no_plots"]
    assert main([*argv, "--out_dir", str(tmp_path / "out"), "--no_progress"]) == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["systems"][0]["summary"]
    audio_s = sum(sf.info(str(wavs / f"{u}.wav")).duration for u in ("awb_001", "awb_002"))
    assert summary["synth_audio_s"] == pytest.approx(audio_s)
    assert summary["rtf"] == pytest.approx(summary["synth_wall_s"] / audio_s)
    assert summary["pesq_wb"] == pytest.approx(4.64, abs=0.01)
    assert "RTF ↓" in capsys.readouterr().out



def test_codec_round_trip_renders_the_references_as_the_codec_cli_does(corpus_dir, tmp_path, load) -> None:
    from dac_vae.inference import main as codec_cli
    from speech.inference import load_codec_checkpoint
    from tests.inference.conftest import REPO, save_like_trainer

    ckpt = save_like_trainer(tmp_path / "codec", REPO / "configs/tiny/dac_vae_harmonic.yaml", "dac_vae", {})
    wavs = corpus_dir / "wavs" / "slt"
    refs = tmp_path / "refs.tsv"
    refs.write_text("".join(f"{u}\t{wavs / u}.wav\n" for u in ("slt_001", "slt_002")), encoding="utf-8")
    common = ["--ref_list", str(refs), "--metrics", "codec", "--no_plots", "--no_progress"]
    assert main([*common, "--codec_round_trip", str(ckpt), "--with_reference", "--out_dir", str(tmp_path / "a")]) == 0
    systems = json.loads((tmp_path / "a" / "results.json").read_text())["systems"]
    assert [(s["name"], s["summary"]["n"]) for s in systems] == [("reference", 2), ("codec_round_trip", 2)]
    # the slow, obvious way: the codec's own CLI writes the round trips to files
    rendered = tmp_path / "rendered"
    assert codec_cli(["roundtrip", "--config", str(ckpt.parent / "config.yaml"), "--checkpoint", str(ckpt),
                      "--inputs", str(wavs / "slt_001.wav"), str(wavs / "slt_002.wav"), "--output_dir", str(rendered),
                      "--device", "cpu", "--quiet"]) == 0
    source = codec_source(load_codec_checkpoint(ckpt).eval(), 24000)
    for item in read_ref_list(refs):
        ref = load(item)
        out, from_file = source(item, ref), load(RefItem(item.utt, str(rendered / f"{item.utt}.wav")))
        assert out.shape == ref.shape and out.abs().amax() > 0
        assert torch.allclose(out, from_file, atol=1e-4), item.utt  # 16-bit PCM rounding of the file only
    # at another scoring rate the reference goes to the codec's rate and back
    at_16k = codec_source(load_codec_checkpoint(ckpt).eval(), 16000)(item, load(item, 16000))
    assert at_16k.shape == load(item, 16000).shape
    with pytest.raises(SystemExit, match="codec checkpoint not found"):
        main([*common, "--codec_round_trip", str(tmp_path / "none.pt"), "--out_dir", str(tmp_path / "c")])


def test_an_utterance_the_codec_fails_on_is_a_counted_skip(test_items) -> None:
    items = test_items[:6]
    seconds = {i.utt: sf.info(i.wav).duration for i in items}
    limit = sorted(seconds.values())[2] + 1e-3  # the three shortest pass

    class _FailingCodec(torch.nn.Module):  # fails like a codec out of memory on a long clip
        sample_rate = 24000

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, audio, audio_len=None):
            if audio.shape[-1] > limit * 24000:
                raise RuntimeError("out of memory")
            mu = audio[:, None, ::480]
            return mu, torch.zeros_like(mu), torch.full((audio.shape[0],), mu.shape[-1])

        def decode(self, z, latent_len=None):
            return z[:, 0].repeat_interleave(480, dim=-1)

    long = {u for u, sec in seconds.items() if sec > limit}
    assert len(long) == 3
    result = Evaluator(["codec"]).evaluate(items, codec_source(_FailingCodec(), 24000), "codec", progress=False)
    assert result.skipped == {"test audio: codec round trip failed (RuntimeError)": len(long)}
    assert {r["utt"] for r in result.rows} == {i.utt for i in items} - long

