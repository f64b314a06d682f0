"""Registered voices: a reference clip validated and its speaker vectors computed once, kept in memory."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from speech.inference import Utterance

__all__ = ["Voice", "VoiceRegistry", "RegistryFull", "voice_id"]


class RegistryFull(RuntimeError):
    """No room for another voice (``--max_voices``): delete one first."""


def voice_id(utterance: Utterance) -> str:
    """Same clip (as decoded at the model rate) and same transcript, same id: registering twice is harmless."""
    digest = hashlib.sha256(utterance.prompt.numpy().tobytes())
    digest.update((utterance.prompt_text or "").encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass
class Voice:
    id: str
    name: str
    utterance: Utterance  # the prompt at the model rate (cut, validated) with its cached speaker vectors
    seconds: float
    created: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "seconds": round(self.seconds, 3),
                "prompt_text": self.utterance.prompt_text, "created": round(self.created, 3)}


class VoiceRegistry:
    """Thread-safe, bounded, in insertion order."""

    def __init__(self, max_voices: int = 100):
        self.max_voices = max_voices
        self._voices: dict[str, Voice] = {}
        self._lock = threading.Lock()

    def add(self, voice: Voice) -> Voice:
        """The stored voice (an existing one when the same clip was registered before)."""
        with self._lock:
            if voice.id in self._voices:
                return self._voices[voice.id]
            if len(self._voices) >= self.max_voices:
                raise RegistryFull(f"{self.max_voices} voices are registered (--max_voices): delete one first")
            self._voices[voice.id] = voice
            return voice

    def get(self, voice_id: str) -> Voice | None:
        with self._lock:
            return self._voices.get(voice_id)

    def remove(self, voice_id: str) -> bool:
        with self._lock:
            return self._voices.pop(voice_id, None) is not None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [v.info() for v in self._voices.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._voices)
