"""Encode wavs to flowae latents, render latent files to 24 kHz wavs, or round-trip wavs; batched.

    python -m flowae.inference encode    --config C --checkpoint K --inputs wavs/ --output_dir lat/
    python -m flowae.inference decode    --config C --checkpoint K --inputs lat/ --output_dir out/
    python -m flowae.inference roundtrip --config C --checkpoint K --inputs wavs/ --output_dir out/

The DAC-VAE's CLI (:mod:`dac_vae.inference`, same flags) with the flowae loader: ``encode`` writes
``<stem>_latentfae.pt`` (the DAC-VAE's layout; ``logs`` is a constant, the latent is deterministic),
``decode`` renders ``mu`` with the config's ODE steps and seed (so it is reproducible).
"""

from __future__ import annotations

import sys
from typing import Sequence

from dac_vae import inference as _codec_cli
from flowae.checkpoint import load_flowae

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    return _codec_cli.main(argv, loader=load_flowae)


if __name__ == "__main__":
    sys.exit(main())
