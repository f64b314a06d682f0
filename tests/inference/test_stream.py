"""Synthesizer.stream: streamed audio equals the offline result; text in pieces; interleaved requests."""
from __future__ import annotations

import json

import pytest
import torch

from speech.audio import load_audio
from speech.inference import InferenceError, Synthesizer, SynthesisOptions, main

from .conftest import REPO, save_like_trainer

TEXT = "The quick brown fox jumps over the lazy dog."
SHORT = "A short one, then."  # the tests that only need a stream use a short text: they run in seconds
OPT = SynthesisOptions(seed=3, max_len_ratio=3.0, n_steps=2)


@pytest.fixture(scope="module")
def streamer(tiny_system, tmp_path_factory):
    """The tiny LM, a causal streaming flow (chunks of 5 tokens, so an utterance has several) and the
    demo's frame-rate codec (phase advance on)."""
    root = tmp_path_factory.mktemp("stream")
    flow = save_like_trainer(root / "flow", REPO / "configs/tiny/flow_stream.yaml", "flow", {"chunk_tokens": 5})
    codec = save_like_trainer(root / "codec", REPO / "configs/tiny/dac_vae_frame.yaml", "dac_vae", {})
    synth = Synthesizer.from_checkpoints(tiny_system["llm"], flow, codec, device="cpu")
    synth.paths = {"llm": tiny_system["llm"], "flow": flow, "codec": codec}  # for the CLI test
    return synth


def _cat(chunks) -> torch.Tensor:
    return torch.cat(list(chunks))


@pytest.mark.parametrize("chunk_tokens", [None])  # other chunk sizes: tests/flow, tests/dac_vae
def test_stream_equals_offline(streamer, tiny_system, chunk_tokens):
    chunks = list(streamer.stream(TEXT, tiny_system["prompt"], options=OPT, chunk_tokens=chunk_tokens))
    offline_opt = SynthesisOptions(**{**OPT.__dict__, "flow_streaming": True})
    (offline,) = streamer.synthesize([streamer.prepare("a", TEXT, tiny_system["prompt"])], offline_opt)
    assert len(chunks) >= 3  # audio arrives in pieces, long before the end
    streamed = torch.cat(chunks)
    assert streamed.dtype == torch.float32 and streamed.shape == offline.audio.shape
    torch.testing.assert_close(streamed, offline.audio, atol=1e-4, rtol=0)


@pytest.mark.parametrize("piece", [1, 5, None])
def test_text_in_pieces_decodes_reproducibly(streamer, tiny_system, piece):
    ids = streamer.text_tokenizer.encode(SHORT)
    n = piece or len(ids)
    pieces = lambda: (ids[i : i + n] for i in range(0, len(ids), n))  # noqa: E731
    a = _cat(streamer.stream(pieces(), tiny_system["prompt"], options=OPT))
    if piece == 1:  # seeded: the same again
        assert torch.equal(a, _cat(streamer.stream(pieces(), tiny_system["prompt"], options=OPT)))
    assert torch.isfinite(a).all()
    assert a.numel() > 0 and a.numel() % streamer.samples_per_token == 0  # whole speech tokens, no special id


def test_string_pieces_tokenize_like_the_whole_text(streamer, tiny_system):
    words = [w + " " for w in SHORT.split()]
    ids = []
    for piece in streamer._text_ids(iter([p for w in words for p in (w[:2], w[2:])]), [0]):
        ids += piece
    assert ids == streamer.text_tokenizer.encode(SHORT)
    by_str = _cat(streamer.stream(iter(words), tiny_system["prompt"], options=OPT))
    by_ids = _cat(streamer.stream(iter([streamer.text_tokenizer.encode(SHORT)]), tiny_system["prompt"], options=OPT))
    assert torch.equal(by_str, by_ids)


def test_interleaved_requests_equal_each_alone(streamer, tiny_system):
    ids = streamer.text_tokenizer.encode(SHORT)
    opt2 = SynthesisOptions(seed=8, max_len_ratio=3.0, n_steps=2)
    make = [
        lambda: streamer.stream(SHORT, tiny_system["prompt"], options=OPT),
        lambda: streamer.stream((ids[i : i + 3] for i in range(0, len(ids), 3)), tiny_system["prompt2"], options=opt2),
    ]
    alone = [list(m()) for m in make]
    gens, got = [m() for m in make], [[], []]
    live = [True, True]
    while any(live):
        for i, g in enumerate(gens):
            if live[i]:
                try:
                    got[i].append(next(g))
                except StopIteration:
                    live[i] = False
    for a, g in zip(alone, got):
        assert len(a) == len(g) and all(torch.equal(x, y) for x, y in zip(a, g))


def test_a_non_causal_flow_cannot_stream(synthesizer, tiny_system):
    with pytest.raises(InferenceError, match="cannot stream: .*not causal"):
        synthesizer.stream(TEXT, tiny_system["prompt"])


@pytest.mark.parametrize("pieces", [None])  # --text_pieces: the same Synthesizer.stream path as above
def test_cli_stream_writes_the_wav_and_first_chunk_latency(streamer, tiny_system, tmp_path, capsys, pieces):
    out = tmp_path / "s.wav"
    argv = [f"--{k}={v}" for k, v in streamer.paths.items()] + [
        "--device", "cpu", "--max_len_ratio", "3", "--n_steps", "2", "--seed", "3", "--stream", "--compare_offline",
        "--text", SHORT, "--prompt_wav", str(tiny_system["prompt"]), "--out", str(out),
    ] + (["--text_pieces", str(pieces)] if pieces else [])
    assert main(argv) == 0
    assert "first after" in capsys.readouterr().out
    rtf = json.loads(out.with_suffix(".rtf.json").read_text())
    wav, _ = load_audio(out)
    assert rtf["first_chunk_seconds"] <= rtf["wall_seconds"] and rtf["chunks"] >= 2
    assert abs(wav.numel() / 24000 - rtf["audio_seconds"]) < 1e-3
    if pieces is None:
        assert rtf["offline_samples_equal"] and rtf["max_abs_diff_vs_offline"] < 1e-4


def test_cli_stream_options_are_checked(capsys):
    base = ["--llm", "a", "--flow", "b", "--codec", "c", "--text", "x", "--prompt_wav", "p.wav", "--out", "o.wav"]
    for extra, msg in ((["--text_pieces", "2"], "need --stream"), (["--stream", "--text_pieces", "0"], ">= 1"),
                       (["--stream", "--list", "l.jsonl", "--out_dir", "d"], "not a --list")):
        with pytest.raises(SystemExit):
            main(base + extra if "--list" not in extra else base[:6] + extra)
        assert msg in capsys.readouterr().err


def test_stream_with_the_harmonic_codec_matches_offline(streamer, tiny_system, tmp_path):
    """The demo's harmonic codec integrates its pitch into a phase, so the ~1e-7 differences of streamed
    flow latents grow along an utterance (to ~1e-3 here, -50 dB, where an untrained flow's pitch jumps
    between 60 and 500 Hz every frame); the carried phase itself is exact (tests/dac_vae/test_streaming.py)."""
    codec = save_like_trainer(tmp_path / "codec", REPO / "configs/tiny/dac_vae_harmonic.yaml", "dac_vae", {})
    synth = Synthesizer.from_checkpoints(tiny_system["llm"], streamer.paths["flow"], codec, device="cpu")
    chunks = list(synth.stream(TEXT, tiny_system["prompt"], options=OPT))
    offline_opt = SynthesisOptions(**{**OPT.__dict__, "flow_streaming": True})
    (offline,) = synth.synthesize([synth.prepare("a", TEXT, tiny_system["prompt"])], offline_opt)
    streamed = torch.cat(chunks)
    assert len(chunks) >= 3 and streamed.shape == offline.audio.shape
    torch.testing.assert_close(streamed, offline.audio, atol=1e-2, rtol=0)
    # -40 dB: measured -49 to -51 dB, depending on the tiny fixture models' tokens
    assert (streamed - offline.audio).pow(2).mean() < 1e-4 * offline.audio.pow(2).mean()
