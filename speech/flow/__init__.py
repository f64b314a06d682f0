"""Stage 2: conditional flow matching from FSQ speech tokens to DAC-VAE latents.

``matching`` (objective + guided sampler), ``assignment`` (immiscible noise), ``timesteps`` and
``solver`` are generic and reused by ``flowae``; ``encoder``, ``estimator`` and ``model`` are Stage 2.
"""
