"""Stage 1: Qwen2 LM from BPE text + learnable speaker vector to FSQ speech tokens."""

from speech.llm.model import SpeechLM, build_qwen2
from speech.llm.speaker import SpeakerExtractor

__all__ = ["SpeakerExtractor", "SpeechLM", "build_qwen2"]
