"""SledSynthesizer.stream / inference.py --sled --stream: streamed audio equals the offline synthesis of the
same request and seed, for chunks that do and do not divide the length; the first chunk comes before
generation ends; text in pieces (bi-stream only for a model trained on that layout); a flowae codec."""

from __future__ import annotations

import json

import pytest
import torch

from speech.audio import load_audio
from speech.inference import InferenceError, SynthesisOptions, main
from speech.sled.inference import SledSynthesizer
from tests.inference.conftest import save_like_trainer
from tests.sled.conftest import build_sled_system

TEXT = "The quick brown fox jumps over the lazy dog."
# Never stops (p > 1 never holds): 3 frames per text token exactly, so the length is known.
NEVER = SynthesisOptions(seed=3, min_len_ratio=1.0, max_len_ratio=3.0, stop_threshold=1.0)


@pytest.fixture(scope="module")
def sled_system(tmp_path_factory, corpus_dir, repo_root):
    return build_sled_system(tmp_path_factory.mktemp("sled_stream"), corpus_dir, repo_root)


@pytest.fixture(scope="module")
def synth(sled_system):
    return SledSynthesizer.from_checkpoints(sled_system["sled"], sled_system["codec"], device="cpu")


def _offline(synth, text, prompt, options, prompt_text=None):
    (result,) = synth.synthesize([synth.prepare("x", text, prompt, prompt_text)], options)
    return result


@pytest.mark.parametrize("chunk", [None, 1, 4, 5])
def test_stream_equals_offline_for_any_chunk(synth, sled_system, chunk):
    offline = _offline(synth, TEXT, sled_system["prompt"], NEVER)
    n_text = len(synth.text_tokenizer.encode(TEXT))
    steps = 3 * n_text // 2 + (3 * n_text) % 2
    assert offline.n_tokens == 2 * steps  # 3 frames per token, whole patches of 2
    size = synth.stream_chunk(chunk)
    assert size == (chunk or 13)  # default: ~0.5 s = ceil(25 / 2) steps at 50 Hz
    if chunk in (4, 5):  # one of the two chunk sizes divides the steps, one does not (both paths run)
        assert [steps % s == 0 for s in (4, 5)].count(True) == 1, f"{steps} steps: pick other chunk sizes"
    chunks = list(synth.stream(TEXT, sled_system["prompt"], options=NEVER, chunk_tokens=chunk))
    streamed = torch.cat(chunks)
    assert len(chunks) >= 2 and streamed.dtype == torch.float32 and streamed.shape == offline.audio.shape
    torch.testing.assert_close(streamed, offline.audio, atol=2e-6, rtol=0)


def test_stream_equals_offline_where_the_stop_head_decides_and_one_shot(synth, sled_system):
    opt = SynthesisOptions(seed=1, min_len_ratio=0.5, max_len_ratio=3.0)  # the config's threshold, random head
    with torch.no_grad():
        bias = synth.sled.stop_head.bias.clone()
        synth.sled.stop_head.bias.fill_(0.3)  # p near 0.5: the stop fires somewhere inside the bounds
    try:
        offline = _offline(synth, TEXT, sled_system["prompt"], opt)
        n_max = 3 * len(synth.text_tokenizer.encode(TEXT))
        assert 0 < offline.n_tokens < n_max - 1
        streamed = torch.cat(list(synth.stream(TEXT, sled_system["prompt"], options=opt, chunk_tokens=3)))
        torch.testing.assert_close(streamed, offline.audio, atol=2e-6, rtol=0)
    finally:
        with torch.no_grad():
            synth.sled.stop_head.bias.copy_(bias)
    # one-shot: the prompt's latents come from the codec, in the stream as offline
    one = _offline(synth, "Go on.", sled_system["prompt"], NEVER, prompt_text="Author of the danger trail.")
    streamed = torch.cat(list(synth.stream("Go on.", sled_system["prompt"], "Author of the danger trail.", NEVER, 2)))
    torch.testing.assert_close(streamed, one.audio, atol=2e-6, rtol=0)


def test_first_chunk_arrives_before_generation_ends(synth, sled_system):
    calls = []
    head = synth.sled.sample_head
    synth.sled.sample_head = lambda h, noise: calls.append(1) or head(h, noise)
    try:
        chunks = synth.stream(TEXT, sled_system["prompt"], options=NEVER, chunk_tokens=2)
        first = next(chunks)
        at_first = len(calls)
        rest = list(chunks)
    finally:
        del synth.sled.sample_head
    total = len(calls)
    assert first.numel() > 0 and rest
    # the codec needs its receptive field after a frame: a few chunks, far from the whole utterance
    context = synth.codec.decoder.context_frames()
    assert at_first <= 2 * (-(-context // 2) + 2) and at_first < total // 2, (at_first, total, context)


def test_text_in_pieces_uni_stream_model_waits_for_the_whole_text(synth, sled_system):
    assert not synth.pieces_bistream
    ids = synth.text_tokenizer.encode(TEXT)
    pieces = (ids[i : i + 3] for i in range(0, len(ids), 3))
    streamed = torch.cat(list(synth.stream(pieces, sled_system["prompt"], options=NEVER)))
    torch.testing.assert_close(streamed, _offline(synth, TEXT, sled_system["prompt"], NEVER).audio, atol=2e-6, rtol=0)
    with pytest.raises(InferenceError, match="empty text"):
        list(synth.stream(iter([[]]), sled_system["prompt"], options=NEVER))


def test_text_in_pieces_bi_stream_model(sled_system):
    bi = SledSynthesizer.from_checkpoints(sled_system["sled_bi"], sled_system["codec"], device="cpu")
    assert bi.pieces_bistream
    ids = bi.text_tokenizer.encode(TEXT)
    pieces = lambda n: [ids[i : i + n] for i in range(0, len(ids), n)]  # noqa: E731
    a = torch.cat(list(bi.stream(iter(pieces(2)), sled_system["prompt"], options=NEVER)))
    b = torch.cat(list(bi.stream(iter(pieces(2)), sled_system["prompt"], options=NEVER)))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # every full text chunk of 5 gets its 15 patches (the layout), then up to the maximum: 3 frames per token
    steps = max(len(ids) // 5 * 15, -(-3 * len(ids) // 2))
    assert a.numel() == steps * 2 * 480
    # the same frames as the model's generate_bistream, decoded whole
    spk = bi.sled.speaker(*_ref(bi, sled_system["prompt"]))
    from speech.llm.sampling import RowRandom

    frames = torch.cat(list(bi.sled.generate_bistream(iter(pieces(2)), spk, stop_threshold=1.0, min_len_ratio=1.0,
                                                      max_len_ratio=3.0, generator=RowRandom(torch.tensor([3])))), -1)
    whole = bi.codec.decode(frames, torch.tensor([frames.shape[-1]]))[0]
    torch.testing.assert_close(a, whole, atol=2e-6, rtol=0)


def _ref(synth, path):
    wav, _ = load_audio(path, synth.sample_rate)
    return wav[None], torch.tensor([wav.numel()])


def test_cli_stream_writes_the_wav_and_compares_with_offline(sled_system, capsys):
    out = sled_system["root"] / "s.wav"
    code = main(["--sled", str(sled_system["sled"]), "--codec", str(sled_system["codec"]), "--device", "cpu",
                 "--text", TEXT, "--prompt_wav", str(sled_system["prompt"]), "--out", str(out), "--stream",
                 "--chunk_tokens", "4", "--compare_offline", "--seed", "3", "--min_len_ratio", "1",
                 "--max_len_ratio", "3", "--stop_threshold", "1"])
    assert code == 0, capsys.readouterr().err
    rtf = json.loads(out.with_suffix(".rtf.json").read_text())
    wav, sr = load_audio(out)
    assert sr == 24000 and wav.numel() == round(rtf["audio_seconds"] * 24000)
    assert rtf["chunk_tokens"] == 4 and rtf["chunks"] >= 2 and rtf["offline_samples_equal"]
    assert rtf["max_abs_diff_vs_offline"] < 1e-5 and rtf["first_chunk_seconds"] < rtf["wall_seconds"]


def test_flowae_codec_synthesizes_offline_and_refuses_to_stream_in_one_line(sled_system, repo_root, capsys):
    flowae = save_like_trainer(sled_system["root"] / "flowae", repo_root / "configs/tiny/flowae.yaml", "flowae", {})
    fa = SledSynthesizer.from_checkpoints(sled_system["sled"], flowae, device="cpu")
    assert type(fa.codec).__name__ == "FlowAE"
    opt = SynthesisOptions(seed=0, min_len_ratio=1.0, max_len_ratio=1.0, stop_threshold=1.0)
    out = _offline(fa, "Hi there.", sled_system["prompt"], opt)
    assert out.audio.numel() == out.n_tokens * 480 > 0 and torch.isfinite(out.audio).all()
    with pytest.raises(InferenceError, match="cannot stream"):
        fa.stream("Hi there.", sled_system["prompt"], options=opt)
    code = main(["--sled", str(sled_system["sled"]), "--codec", str(flowae), "--device", "cpu", "--text", "Hi.",
                 "--prompt_wav", str(sled_system["prompt"]), "--out", str(sled_system["root"] / "f.wav"), "--stream"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot stream") and "\n" not in err
