#!/usr/bin/env python3
"""Synthesize speech with trained checkpoints: ``python inference.py --help`` (also ``speech-tts``)."""
from speech.inference import main

if __name__ == "__main__":
    raise SystemExit(main())
