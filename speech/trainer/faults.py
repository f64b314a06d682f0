"""Fault-injection points for crash tests (``tools/fault_campaign.py``); inert unless enabled.

The trainer calls :func:`point` at the moments a kill is most interesting: after each optimizer
step and at every stage of a checkpoint save (temp file written but not renamed, between the two
renames of a DeepSpeed folder, between a checkpoint's rename and its metrics YAML, in the middle
of pruning). Three environment variables, read at the first call, turn the points on:

``SPEECH_FAULT_LOG=FILE``
    append one line ``NAME STEP TIME`` per point reached (``TIME``: ``time.monotonic()``, which
    processes of one machine share; unbuffered ``O_APPEND`` writes, so the line survives a
    SIGKILL right after it);
``SPEECH_FAULT_KILL=NAME@STEP``
    the process sends itself SIGKILL at the first point ``NAME`` reached at optimizer step ``STEP``;
``SPEECH_FAULT_DELAY=SECONDS``
    sleep that long at every point, which widens each window so kills from a timer outside the
    process land inside saves too.

``STEP`` is the trainer's optimizer step when the point is reached (set by the loop through
:func:`set_step`); points reached before training starts (config writing, resume) carry -1.
With none of the variables set a point costs one attribute lookup and a comparison.
"""
from __future__ import annotations

import os
import signal
import time

__all__ = ["point", "set_step", "reset"]

_state: dict | None = None
_step = -1


def _load() -> dict:
    kill = os.environ.get("SPEECH_FAULT_KILL", "")
    target = None
    if kill:
        name, _, step = kill.rpartition("@")
        target = (name, int(step))
    log = os.environ.get("SPEECH_FAULT_LOG")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None
    delay = float(os.environ.get("SPEECH_FAULT_DELAY", "0") or 0)
    return {"active": bool(target or fd is not None or delay > 0), "target": target, "fd": fd, "delay": delay}


def reset() -> None:
    """Forget the environment read so far (tests that change the variables)."""
    global _state, _step
    if _state and _state["fd"] is not None:
        os.close(_state["fd"])
    _state, _step = None, -1


def set_step(step: int) -> None:
    """The optimizer step that later points are tagged with."""
    global _step
    _step = int(step)


def point(name: str) -> None:
    """A place where a crash test may log, pause, or kill this process (see the module doc)."""
    global _state
    if _state is None:
        _state = _load()
    if not _state["active"]:
        return
    if _state["fd"] is not None:
        os.write(_state["fd"], f"{name} {_step} {time.monotonic():.6f}\n".encode())
    if _state["target"] == (name, _step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _state["delay"] > 0:
        time.sleep(_state["delay"])
