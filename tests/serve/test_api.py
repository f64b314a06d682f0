"""The HTTP API of a real ``python -m speech.serve`` process on 127.0.0.1 (tiny checkpoints): synthesis,
voices, health, docs, every kind of bad input (the server keeps serving), and concurrent requests
batched into one forward pass giving what each gives alone."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from speech.audio import load_audio

pytestmark = pytest.mark.slow  # a real server process (~20 s to build the tiny models and start)

TEXTS = ["Hello there, how are you today?", "A short one.", "The quick brown fox jumps.", "Speech on a laptop."]


def wav_bytes(wav: np.ndarray, sr: int = 24000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def read_wav(content: bytes) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(content), dtype="float32")
    return data, sr


def tts(server, timeout: float = 120, **fields) -> httpx.Response:
    files = {}
    if "reference" in fields:
        files["reference"] = fields.pop("reference")
    return httpx.post(server.url + "/v1/tts", data=fields, files=files or None, timeout=timeout)


def check_error(r: httpx.Response, status: int, match: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"], body
    assert match in body["error"], body["error"]


@pytest.fixture(scope="module")
def clip(tiny_system) -> bytes:
    return tiny_system["prompt"].read_bytes()


@pytest.fixture(scope="module")
def voices(server, tiny_system) -> list[str]:
    ids = []
    for key in ("prompt", "prompt2"):
        r = httpx.post(server.url + "/v1/voices", data={"name": key},
                       files={"reference": (f"{key}.wav", tiny_system[key].read_bytes())}, timeout=60)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def test_health_docs_and_page(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["sample_rate"] == 24000 and health["max_batch"] == 4
    assert "swagger" in httpx.get(server.url + "/docs").text.lower()
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/tts", "/v1/voices", "/v1/tts/stream", "/health"} <= set(paths)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="synthesize"' in page.text


def test_tts_with_an_uploaded_clip(server, clip):
    r = tts(server, text=TEXTS[0], seed="3", reference=("slt.wav", clip, "audio/wav"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    wav, sr = read_wav(r.content)
    n_tokens = int(r.headers["X-Tokens"])
    assert sr == 24000 and n_tokens > 0 and wav.shape == (n_tokens * 960,)  # exactly tokens / 25 s
    assert float(r.headers["X-Audio-Seconds"]) == pytest.approx(n_tokens / 25)
    assert float(r.headers["X-RTF"]) > 0 and r.headers["X-Batch-Size"] == "1"
    again = tts(server, text=TEXTS[0], seed="3", reference=("slt.wav", clip, "audio/wav"))
    assert again.content == r.content  # same seed, same wav


def test_voices_register_list_use_forget(server, voices, clip):
    listed = httpx.get(server.url + "/v1/voices").json()["voices"]
    assert [v["id"] for v in listed][:2] == voices and listed[0]["name"] == "prompt"
    again = httpx.post(server.url + "/v1/voices", files={"reference": ("x.wav", clip)}).json()
    assert again["id"] == voices[0]  # the same clip is the same voice
    by_voice = tts(server, text=TEXTS[1], voice_id=voices[0])
    by_clip = tts(server, text=TEXTS[1], reference=("slt.wav", clip))
    assert by_voice.status_code == by_clip.status_code == 200
    a, b = read_wav(by_voice.content)[0], read_wav(by_clip.content)[0]
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 + 2 / 32768  # cached speaker vectors == computed

    extra = httpx.post(server.url + "/v1/voices", data={"name": "tmp"},
                       files={"reference": ("y.wav", wav_bytes(read_wav(clip)[0][::-1].copy()))}).json()
    assert httpx.delete(server.url + f"/v1/voices/{extra['id']}").status_code == 204
    check_error(tts(server, text=TEXTS[1], voice_id=extra["id"]), 404, "unknown voice id")
    check_error(httpx.delete(server.url + f"/v1/voices/{extra['id']}"), 404, "unknown voice id")


def bad_requests(clip: bytes) -> dict[str, tuple]:
    """name -> (request kwargs for httpx.post on /v1/tts, status, part of the reason)."""
    wav, sr = read_wav(clip)
    long_clip = wav_bytes(np.tile(wav, int(12 * sr / len(wav)) + 1)[: 12 * sr])  # 12 s > --max_prompt_seconds 10
    ref = lambda data, name="ref.wav": {"files": {"reference": (name, data, "audio/wav")}}  # noqa: E731

    def chunked():  # a 2.5 MiB upload in chunks, without Content-Length
        yield b'--zz\r\nContent-Disposition: form-data; name="reference"; filename="a.wav"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 2**16
        yield b"\r\n--zz--\r\n"

    return {
        "empty text": ({"data": {"text": "  "}, **ref(clip)}, 422, "empty text"),
        "text too long": ({"data": {"text": "word " * 50}, **ref(clip)}, 422, "more than 200 (--max_text_chars)"),
        "not audio": ({"data": {"text": "Hi there."}, **ref(b"this is not audio at all" * 10, "a.wav")}, 415,
                      "not audio that can be decoded"),
        "truncated": ({"data": {"text": "Hi there."}, **ref(clip[:40])}, 415, "not audio that can be decoded"),
        "empty upload": ({"data": {"text": "Hi there."}, **ref(b"")}, 422, "empty (0 bytes)"),
        "clip too short": ({"data": {"text": "Hi there."}, **ref(wav_bytes(wav[: sr // 10]))}, 422,
                           "shorter than 0.5 s"),
        "clip too long": ({"data": {"text": "Hi there."}, **ref(long_clip)}, 422, "longer than 10 s"),
        "silent clip": ({"data": {"text": "Hi there."}, **ref(wav_bytes(np.zeros(sr, np.float32)))}, 422, "silent"),
        "unknown voice": ({"data": {"text": "Hi there.", "voice_id": "nope"}}, 404, "unknown voice id 'nope'"),
        "no voice": ({"data": {"text": "Hi there."}}, 422, "give a reference clip"),
        "both voices": ({"data": {"text": "Hi there.", "voice_id": "x"}, **ref(clip)}, 422, "not both"),
        "bad option": ({"data": {"text": "Hi there.", "n_steps": "0"}, **ref(clip)}, 422, "n_steps"),
        "bad sampling": ({"data": {"text": "Hi there.", "sampling": "beam"}, **ref(clip)}, 422, "sampling"),
        "prompt text over a long clip": ({"data": {"text": "Hi.", "prompt_text": "x"}, **ref(long_clip)}, 422,
                                         "longer than 10 s"),
        "oversized body": ({"data": {"text": "Hi there."}, **ref(b"\0" * (3 * 2**20))}, 413, "larger than"),
        "oversized chunked body": ({"content": chunked(), "headers": {"content-type": "multipart/form-data; boundary=zz"}},
                                   413, "larger than"),
        "garbled multipart": ({"content": b"--zz\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
                              422, "empty text"),  # the parser reads no field from it
    }


def test_every_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(server, clip):
    for name, (kwargs, status, match) in bad_requests(clip).items():
        r = httpx.post(server.url + "/v1/tts", timeout=60, **kwargs)
        try:
            check_error(r, status, match)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        assert httpx.get(server.url + "/health").json()["status"] == "ok", name
    check_error(httpx.post(server.url + "/v1/voices", files={"reference": ("a.wav", b"junk" * 50)}), 415, "not audio")
    check_error(httpx.post(server.url + "/v1/voices", data={"name": "x"}), 422, "no reference clip")
    # This server's flow is not causal: a good stream request is a 409 saying so, a bad one the /v1/tts refusal.
    check_error(httpx.post(server.url + "/v1/tts/stream", data={"text": "Hi."}), 422, "give a reference clip")
    check_error(httpx.post(server.url + "/v1/tts/stream", data={"text": " "}, files={"reference": ("a.wav", clip)}),
                422, "empty text")
    check_error(httpx.post(server.url + "/v1/tts/stream", data={"text": "Hi.", "voice_id": "nope"}), 404, "unknown voice")
    check_error(httpx.post(server.url + "/v1/tts/stream", data={"text": "Hi."}, files={"reference": ("a.wav", clip)},
                           timeout=60), 409, "cannot stream")
    assert "Traceback" not in json.dumps(httpx.get(server.url + "/health").json())
    r = tts(server, text=TEXTS[3], reference=("slt.wav", clip))  # still serving
    assert r.status_code == 200 and read_wav(r.content)[1] == 24000


def test_concurrent_requests_are_batched_and_equal_the_same_requests_one_by_one(server, voices):
    requests = [{"text": t, "voice_id": voices[i % 2], "seed": "7"} for i, t in enumerate(TEXTS)]
    alone = [tts(server, **r) for r in requests]
    assert all(r.status_code == 200 and r.headers["X-Batch-Size"] == "1" for r in alone)
    before = httpx.get(server.url + "/health").json()
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: tts(server, **r), requests))
    after = httpx.get(server.url + "/health").json()
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    sizes = [int(r.headers["X-Batch-Size"]) for r in together]
    assert max(sizes) > 1, sizes  # 4 requests within the 300 ms window share forward passes
    assert after["requests"] - before["requests"] == 4 and after["batches"] - before["batches"] < 4
    for a, b in zip(alone, together):
        wa, wb = read_wav(a.content)[0], read_wav(b.content)[0]
        assert a.headers["X-Tokens"] == b.headers["X-Tokens"] and wa.shape == wb.shape
        assert np.abs(wa - wb).max() <= 1e-4 + 2 / 32768  # batch == alone (float tolerance + 16-bit rounding)


def test_a_wav_at_another_rate_is_resampled(server, clip, tiny_system):
    wav, _ = load_audio(tiny_system["prompt"], 16000)
    r = tts(server, text=TEXTS[1], reference=("r16k.wav", wav_bytes(wav.numpy(), 16000)))
    assert r.status_code == 200, r.text


def test_one_shot_prompt_text_by_upload_and_by_voice(server, tiny_system, clip):
    """With the clip's transcript the LM continues the prompt (the server has --speech_tokenizer)."""
    transcript = tiny_system["prompt"].with_suffix(".txt").read_text().strip()
    r = httpx.post(server.url + "/v1/voices", data={"name": "one-shot", "prompt_text": transcript},
                   files={"reference": ("slt.wav", clip)}, timeout=60)
    assert r.status_code == 201 and r.json()["prompt_text"] == transcript
    by_voice = tts(server, text=TEXTS[1], voice_id=r.json()["id"])
    by_clip = tts(server, text=TEXTS[1], prompt_text=transcript, reference=("slt.wav", clip))
    assert by_voice.status_code == by_clip.status_code == 200
    assert by_voice.headers["X-Tokens"] == by_clip.headers["X-Tokens"]
    assert np.abs(read_wav(by_voice.content)[0] - read_wav(by_clip.content)[0]).max() <= 1e-4 + 2 / 32768


# ------------------------------------------------------------------------------------------ streaming


@pytest.fixture(scope="module")
def stream_system(tiny_system, tmp_path_factory):
    """A causal streaming flow (chunks of 5 tokens) and the frame-rate codec, as tests/inference/test_stream.py."""
    from tests.inference.conftest import REPO, save_like_trainer

    root = tmp_path_factory.mktemp("serve_stream")
    flow = save_like_trainer(root / "flow", REPO / "configs/tiny/flow_stream.yaml", "flow", {"chunk_tokens": 5})
    codec = save_like_trainer(root / "codec", REPO / "configs/tiny/dac_vae_frame.yaml", "dac_vae", {})
    return {**tiny_system, "flow": flow, "codec": codec}


@pytest.fixture(scope="module")
def stream_server(stream_system, tmp_path_factory):
    from tests.serve.conftest import Server

    s = Server(stream_system, tmp_path_factory.mktemp("serve_stream_log") / "server.log", "--max_text_chars", "200")
    yield s
    s.stop()


def read_stream(r: httpx.Response) -> tuple[np.ndarray, int]:
    """A streamed wav: 44-byte header with sizes 0xFFFFFFFF, then 16-bit mono PCM to the end."""
    body = r.content
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt " and body[36:40] == b"data"
    assert body[4:8] == body[40:44] == b"\xff\xff\xff\xff"
    channels, sr, bits = np.frombuffer(body[22:24], "<u2")[0], np.frombuffer(body[24:28], "<u4")[0], body[34]
    assert (channels, bits) == (1, 16) and (len(body) - 44) % 2 == 0
    return np.frombuffer(body[44:], "<i2").astype(np.float32) / 32767, int(sr)


def test_stream_equals_synthesizer_stream_and_a_voice_streams_like_its_clip(stream_server, stream_system):
    import torch

    from speech.inference import SynthesisOptions, Synthesizer

    clip = stream_system["prompt"].read_bytes()
    text = "The quick brown fox jumps over the lazy dog."
    with httpx.stream("POST", stream_server.url + "/v1/tts/stream", data={"text": text, "seed": "3"},
                      files={"reference": ("slt.wav", clip)}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.headers.get("transfer-encoding") == "chunked"
        r.read()
    streamed, sr = read_stream(r)
    s = stream_system
    synth = Synthesizer.from_checkpoints(s["llm"], s["flow"], s["codec"], speech_tokenizer=s["fsq"], device="cpu")
    opt = SynthesisOptions(seed=3, max_len_ratio=4.0, n_steps=4)
    expected = torch.cat(list(synth.stream(text, s["prompt"], options=opt))).clamp(-1, 1).numpy()
    assert sr == 24000 and streamed.shape == expected.shape and expected.size > 0
    np.testing.assert_allclose(streamed, expected, atol=1 / 32767 + 1e-4, rtol=0)

    vid = httpx.post(stream_server.url + "/v1/voices", files={"reference": ("slt.wav", clip)}, timeout=60).json()["id"]
    r = httpx.post(stream_server.url + "/v1/tts/stream", data={"text": text, "seed": "3", "voice_id": vid}, timeout=120)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(read_stream(r)[0], streamed)
    # bad input: a one-line 4xx, and the server keeps serving (offline synthesis too)
    check_error(httpx.post(stream_server.url + "/v1/tts/stream", data={"text": "x" * 300, "voice_id": vid}), 422,
                "more than 200")
    check_error(httpx.post(stream_server.url + "/v1/tts/stream", data={"text": "Hi.", "voice_id": vid, "n_steps": "0"}),
                422, "n_steps")
    r = tts(stream_server, text="A short one.", voice_id=vid)
    assert r.status_code == 200 and read_wav(r.content)[1] == 24000
