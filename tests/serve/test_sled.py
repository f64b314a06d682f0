"""``speech-serve --sled CKPT --codec CKPT``: the continuous AR path behind the same API (a real server process):
/v1/tts gives what SledSynthesizer.synthesize gives, voices, /v1/tts/stream what SledSynthesizer.stream gives."""
from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from speech.inference import SynthesisOptions
from speech.sled.inference import SledSynthesizer
from tests.serve.conftest import Server
from tests.serve.test_api import check_error, read_stream, read_wav, tts
from tests.sled.conftest import build_sled_system

pytestmark = pytest.mark.slow  # a real server process

TEXT = "The quick brown fox jumps over the lazy dog."
# what the server is started with: never stop (p > 1 never holds), 1 to 3 latent frames per text token
OPT = SynthesisOptions(seed=3, min_len_ratio=1.0, max_len_ratio=3.0, stop_threshold=1.0)
PCM = 1 / 32767 + 1e-5  # 16-bit rounding


@pytest.fixture(scope="module")
def sled_system(tmp_path_factory, corpus_dir, repo_root):
    return build_sled_system(tmp_path_factory.mktemp("serve_sled"), corpus_dir, repo_root)


@pytest.fixture(scope="module")
def sled_server(sled_system, tmp_path_factory):
    models = ["--sled", str(sled_system["sled"]), "--codec", str(sled_system["codec"])]
    s = Server(sled_system, tmp_path_factory.mktemp("serve_sled_log") / "server.log", "--min_len_ratio", "1",
               "--max_len_ratio", "3", "--stop_threshold", "1", "--max_text_chars", "200", models=models)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def synth(sled_system):
    return SledSynthesizer.from_checkpoints(sled_system["sled"], sled_system["codec"], device="cpu")


def test_tts_voices_and_stream_equal_the_synthesizer(sled_server, sled_system, synth):
    health = httpx.get(sled_server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "sled" and health["sample_rate"] == 24000
    clip = sled_system["prompt"].read_bytes()
    r = tts(sled_server, text=TEXT, seed="3", reference=("slt.wav", clip, "audio/wav"))
    assert r.status_code == 200, r.text
    wav, sr = read_wav(r.content)
    frames = int(r.headers["X-Tokens"])  # latent frames on this path
    (expected,) = synth.synthesize([synth.prepare("x", TEXT, sled_system["prompt"])], OPT)
    n_text = len(synth.text_tokenizer.encode(TEXT))
    assert sr == 24000 and frames == expected.n_tokens == 2 * ((3 * n_text + 1) // 2)  # whole patches of 2 frames
    assert wav.shape == (frames * 480,)
    np.testing.assert_allclose(wav, expected.audio.clamp(-1, 1).numpy(), atol=PCM, rtol=0)

    # a registered voice gives what its clip gives
    vid = httpx.post(sled_server.url + "/v1/voices", files={"reference": ("slt.wav", clip)}, timeout=60).json()["id"]
    r2 = tts(sled_server, text=TEXT, seed="3", voice_id=vid)
    assert r2.status_code == 200, r2.text
    np.testing.assert_allclose(read_wav(r2.content)[0], wav, atol=PCM, rtol=0)

    # streamed: chunked wav equal to SledSynthesizer.stream (and, within rounding, to the offline wav)
    with httpx.stream("POST", sled_server.url + "/v1/tts/stream", data={"text": TEXT, "seed": "3", "voice_id": vid},
                      timeout=120) as s:
        assert s.status_code == 200 and s.headers.get("transfer-encoding") == "chunked"
        s.read()
    streamed, sr = read_stream(s)
    chunks = torch.cat(list(synth.stream(TEXT, sled_system["prompt"], options=OPT))).clamp(-1, 1).numpy()
    assert sr == 24000 and streamed.shape == chunks.shape == wav.shape
    np.testing.assert_allclose(streamed, chunks, atol=PCM, rtol=0)
    np.testing.assert_allclose(streamed, wav, atol=PCM, rtol=0)


def test_sled_options_and_bad_input(sled_server, sled_system):
    clip = sled_system["prompt"].read_bytes()
    # a per-request stop threshold of 0 stops at the minimum: 1 frame per text token, whole patches
    r = tts(sled_server, text="A short one.", stop_threshold="0", reference=("slt.wav", clip))
    assert r.status_code == 200, r.text
    n_text = int(r.headers["X-Tokens"])
    assert read_wav(r.content)[0].shape == (n_text * 480,)
    longer = tts(sled_server, text="A short one.", reference=("slt.wav", clip))
    assert int(longer.headers["X-Tokens"]) > n_text  # the server default (never stop): the maximum
    check_error(tts(sled_server, text="Hi.", stop_threshold="1.5", reference=("slt.wav", clip)), 422, "stop_threshold")
    check_error(tts(sled_server, text="x" * 300, reference=("slt.wav", clip)), 422, "more than 200")
    assert tts(sled_server, text="Hi.", reference=("slt.wav", clip)).status_code == 200  # still serving
