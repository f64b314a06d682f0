"""DynamicBatcher and the app's error paths with a stand-in synthesizer (no models, milliseconds):
grouping by options, the window, the bounded queue (503), one failing request in a batch, and
model errors that never reach the client as a traceback."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from speech.inference import InferenceError, Synthesis, SynthesisOptions, Utterance
from speech.serve.app import ServeConfig, create_app
from speech.serve.batcher import DynamicBatcher, QueueFull


class FakeSynth:
    """Audio = the text length as a constant; 'boom' raises like a model bug, 'empty' like a model refusal."""

    sample_rate, min_prompt_seconds, max_prompt_seconds = 24000, 0.5, 15.0

    def __init__(self):
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def synthesize(self, batch, options=None):
        self.gate.wait(10)
        self.batches.append([u.text for u in batch])
        if any(u.text == "boom" for u in batch):
            raise RuntimeError("a model bug\nwith a second line")
        if any(u.text == "empty" for u in batch):
            raise InferenceError("the LM produced no speech tokens")
        return [Synthesis(u.utt, torch.full((960,), len(u.text) / 100), 1) for u in batch]

    def prepare(self, utt, text, prompt_wav, prompt_text=None):
        if text == "crash":
            raise RuntimeError("a bug outside the models\nTraceback (most recent call last): ...")
        return utt_of(text)


def utt_of(text: str) -> Utterance:
    return Utterance(text, text, torch.ones(len(text), dtype=torch.long), torch.zeros(24000))


@pytest.fixture
def synth():
    return FakeSynth()


def test_concurrent_requests_with_equal_options_share_a_batch(synth):
    b = DynamicBatcher(synth, max_batch=3, window_s=0.5, max_queue=10)
    try:
        a, other = SynthesisOptions(seed=1), SynthesisOptions(seed=2)
        futures = [b.submit(utt_of(t), o) for t, o in [("aa", a), ("bbb", a), ("c", other), ("dddd", a), ("e", a)]]
        results = [f.result(10) for f in futures]
    finally:
        b.close()
    assert synth.batches == [["aa", "bbb", "dddd"], ["c"], ["e"]]  # full at 3; seeds never mix; FIFO
    assert [r.batch_size for r in results] == [3, 3, 1, 3, 1]
    assert [r.synthesis.utt for r in results] == ["aa", "bbb", "c", "dddd", "e"]
    assert (b.requests, b.batches) == (5, 3)


def test_max_batch_1_turns_batching_off(synth):
    b = DynamicBatcher(synth, max_batch=1, window_s=1.0)
    try:
        start = time.monotonic()
        futures = [b.submit(utt_of(t), SynthesisOptions()) for t in ("a", "b", "c")]
        assert [f.result(10).batch_size for f in futures] == [1, 1, 1]
        assert time.monotonic() - start < 1.0  # no window wait without batching
    finally:
        b.close()


def test_the_queue_is_bounded(synth):
    synth.gate.clear()  # the worker blocks inside its first batch
    b = DynamicBatcher(synth, max_batch=1, window_s=0, max_queue=2)
    try:
        first = b.submit(utt_of("a"), SynthesisOptions())
        deadline = time.monotonic() + 5
        while b.queued and time.monotonic() < deadline:
            time.sleep(0.01)  # taken by the worker
        queued = [b.submit(utt_of(t), SynthesisOptions()) for t in ("b", "c")]
        with pytest.raises(QueueFull, match="queue is full"):
            b.submit(utt_of("d"), SynthesisOptions())
        synth.gate.set()
        assert all(f.result(10) for f in [first, *queued])
    finally:
        synth.gate.set()
        b.close()


def test_one_failing_request_does_not_fail_its_batch(synth):
    b = DynamicBatcher(synth, max_batch=3, window_s=0.5)
    try:
        futures = [b.submit(utt_of(t), SynthesisOptions()) for t in ("ok", "boom", "fine")]
        assert futures[0].result(10).synthesis.utt == "ok" and futures[2].result(10).synthesis.utt == "fine"
        with pytest.raises(RuntimeError, match="model bug"):
            futures[1].result(10)
    finally:
        b.close()


def test_model_errors_are_one_line_without_traceback_and_a_full_queue_is_503(synth):
    b = DynamicBatcher(synth, max_batch=1, window_s=0, max_queue=1)
    client = TestClient(create_app(synth, b, ServeConfig()), raise_server_exceptions=False)
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(24000, dtype=np.float32) / 10), 24000, format="WAV")
    ref = {"reference": ("a.wav", buf.getvalue())}
    try:
        r = client.post("/v1/tts", data={"text": "boom"}, files=ref)
        assert r.status_code == 500 and r.json() == {"error": "synthesis failed (internal error; details in the server log)"}
        r = client.post("/v1/tts", data={"text": "empty"}, files=ref)
        assert r.status_code == 422 and r.json() == {"error": "the LM produced no speech tokens"}
        r = client.post("/v1/tts", data={"text": "crash"}, files=ref)
        assert r.status_code == 500 and r.json() == {"error": "internal error (details in the server log)"}
        assert client.get("/health").json()["status"] == "ok"
        synth.gate.clear()
        b.submit(utt_of("x"), SynthesisOptions())
        deadline = time.monotonic() + 5
        while b.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        b.submit(utt_of("y"), SynthesisOptions())  # the one place in the queue
        r = client.post("/v1/tts", data={"text": "hello"}, files=ref)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "queue is full" in r.json()["error"]
    finally:
        synth.gate.set()
        b.close()
    assert client.get("/health").status_code == 503  # the worker is gone: not healthy
