"""Dynamic batching: concurrent requests that arrive within a short window share one forward pass.

One worker thread owns the models, so they never run twice at once. A request waits at most
``window_s`` (counted from its arrival) for others to join it; requests with equal
:class:`~speech.inference.SynthesisOptions` go in the same batch (the flow's noise comes from one
seed per batch), up to ``max_batch``. The synthesizer's output does not depend on the batch, so
every client gets what it would have got alone. The queue is bounded: :class:`QueueFull` when full.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from speech.inference import Synthesis, SynthesisOptions, Synthesizer, Utterance

__all__ = ["DynamicBatcher", "QueueFull", "Result"]

log = logging.getLogger("speech.serve")


class QueueFull(RuntimeError):
    """The bounded queue has no room: the caller should answer 503 and let the client retry."""


@dataclass
class Result:
    """One request's synthesis and how it was served."""

    synthesis: Synthesis
    batch_size: int
    queue_seconds: float  # arrival -> start of its forward pass
    compute_seconds: float  # the forward pass it was part of


@dataclass
class _Job:
    future: Future
    arrived: float
    utterance: Utterance | None = None
    options: SynthesisOptions | None = None
    call: Callable[[], Any] | None = None  # any other model work (a voice's speaker vectors), run alone
    key: tuple = field(default=())


class DynamicBatcher:
    """Runs :meth:`Synthesizer.synthesize` on batches of concurrent requests, in one worker thread."""

    def __init__(self, synth: Synthesizer, max_batch: int = 8, window_s: float = 0.02, max_queue: int = 32):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, window_s >= 0: {max_batch}, {max_queue}, {window_s}")
        self.synth, self.max_batch, self.window_s, self.max_queue = synth, max_batch, window_s, max_queue
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self.requests = 0  # synthesized requests
        self.batches = 0  # forward passes that produced them
        self._thread = threading.Thread(target=self._loop, name="speech-serve-batcher", daemon=True)
        self._thread.start()

    # --------------------------------------------------------------------------------- public

    def submit(self, utterance: Utterance, options: SynthesisOptions) -> Future:
        """Queue one request; the future gets a :class:`Result` (or the synthesis error)."""
        return self._put(_Job(Future(), time.monotonic(), utterance, options, key=dataclasses.astuple(options)))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` in the worker thread, between batches (model work that must not overlap them)."""
        return self._put(_Job(Future(), time.monotonic(), call=fn))

    @property
    def alive(self) -> bool:
        """The worker thread runs (it catches every model error, so only a bug or close() stops it)."""
        return self._thread.is_alive() and not self._closed

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------- internal

    def _put(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting): retry later")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def _take(self) -> list[_Job]:
        """The oldest job and, for a synthesis, every queued one with its options (up to max_batch),
        once the batch is full or the oldest has waited ``window_s``."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self._pending[0]
            if first.call is None and self.max_batch > 1:
                deadline = first.arrived + self.window_s
                while sum(j.key == first.key and j.call is None for j in self._pending) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        break
                    self._cond.wait(left)
            batch = [first] if first.call is not None else [
                j for j in self._pending if j.call is None and j.key == first.key
            ][: self.max_batch]
            for job in batch:
                self._pending.remove(job)
        return [j for j in batch if j.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            if batch[0].call is not None:
                try:
                    batch[0].future.set_result(batch[0].call())
                except Exception as exc:  # handed to the request, which answers without a traceback
                    batch[0].future.set_exception(exc)
                continue
            self._synthesize(batch)

    def _synthesize(self, batch: list[_Job]) -> None:
        start = time.monotonic()
        try:
            results = self.synth.synthesize([j.utterance for j in batch], batch[0].options)
        except Exception as exc:
            if len(batch) > 1:  # one bad request must not fail the others: each alone
                log.warning("a batch of %d failed (%s): running its requests one by one", len(batch), exc)
                for job in batch:
                    self._synthesize_one(job)
                return
            batch[0].future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        with self._cond:
            self.requests += len(batch)
            self.batches += 1
        for job, synthesis in zip(batch, results):
            job.future.set_result(Result(synthesis, len(batch), start - job.arrived, seconds))

    def _synthesize_one(self, job: _Job) -> None:
        start = time.monotonic()
        try:
            (synthesis,) = self.synth.synthesize([job.utterance], job.options)
        except Exception as exc:
            job.future.set_exception(exc)
            return
        with self._cond:
            self.requests += 1
            self.batches += 1
        job.future.set_result(Result(synthesis, 1, start - job.arrived, time.monotonic() - start))
