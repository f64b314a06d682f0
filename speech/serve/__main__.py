"""``python -m speech.serve``: the same as ``speech-serve``."""
import sys

from speech.serve.cli import main

sys.exit(main())
