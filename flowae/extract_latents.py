"""Extract flowae latents per utterance (``<utt>_latentfae.pt``) plus ``latentfae_stats.json``.

    python -m flowae.extract_latents --config exp/flowae/config.yaml --checkpoint exp/flowae/final.pt \
        --index exp/data/train.jsonl --output_dir exp/latents_fae --skip_existing

The DAC-VAE's extractor (:mod:`dac_vae.extract_dac_latents`: same flags, index or folders, torchrun
sharding, resumable) with the flowae loader; index the files with
``tools/generate_json_index.py --latent_suffix _latentfae.pt``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from dac_vae import extract_dac_latents as _extractor
from flowae.checkpoint import load_flowae

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    return _extractor.main(argv, loader=load_flowae)


if __name__ == "__main__":
    sys.exit(main())
