#!/usr/bin/env python3
"""Train any model of the project: ``python train.py --help`` (or under ``torchrun``)."""
from speech.trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
