"""Stage 2 model: FSQ speech tokens (+ speaker, + prompt latents) -> DAC-VAE latents by flow matching.

Training (``forward``): the token encoder gives ``mu`` at latent rate; the target is the DAC-VAE
posterior mean normalised per dimension with dataset statistics (buffers, saved with the
checkpoint); a random prefix of 0-30% of the frames is given as condition with probability 0.5 and
excluded from the loss; conditions are dropped together for classifier-free guidance inside
:class:`~speech.flow.matching.FlowMatching`.

Inference (``sample``): the same conditions, seeded fixed noise (frame ``j``'s noise depends only on
the seed and ``j``, so batching, padding and streaming never change it), an ODE solve with guidance
(``matching: FlowMatching``) or 1..N average-velocity steps with the guidance trained in
(``matching: MeanFlow``, whose estimator takes a second time), then the statistics are undone: the
result is in the DAC-VAE's raw ``mu`` space.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speech.config import ConfigError
from speech.flow.encoder import TokenEncoder
from speech.flow.estimator import Estimator
from speech.flow.matching import FlowMatching
from speech.utils.mask import lengths_to_mask

__all__ = [
    "FlowModel", "load_latent_stats", "seeded_noise", "concat_padded", "fit_length", "shift_left", "smooth_pitch",
]

log = logging.getLogger(__name__)

_NOISE_BLOCK = 64  # frames per independently seeded noise block


def load_latent_stats(path: str | Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension ``mean`` and ``std`` ``[dim]`` of DAC-VAE ``mu`` from a ``.pt`` dict or a ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"latent_stats file not found: {path}")
    try:
        stats = (
            json.loads(path.read_text(encoding="utf-8"))
            if path.suffix == ".json"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
        mean = torch.as_tensor(stats["mean"], dtype=torch.float32).flatten()
        std = torch.as_tensor(stats["std"], dtype=torch.float32).flatten()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"latent_stats {path}: expected a dict with 'mean' and 'std' of length {dim} ({type(exc).__name__}: {exc})"
        ) from None
    if mean.numel() != dim or std.numel() != dim:
        raise ConfigError(
            f"latent_stats {path}: mean/std have {mean.numel()}/{std.numel()} entries, the model's latent_dim is {dim}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ConfigError(f"latent_stats {path}: mean/std must be finite and std > 0")
    return mean, std


def seeded_noise(seed: int, dim: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise ``[dim, length]`` whose frame ``j`` depends only on ``(seed, j)``.

    Drawn in blocks of frames, each from its own CPU generator, so any prefix of a longer draw equals a
    shorter draw, and every item of a batch gets the same noise as when sampled alone.
    """
    blocks = []
    for b in range((length + _NOISE_BLOCK - 1) // _NOISE_BLOCK):
        gen = torch.Generator().manual_seed((int(seed) << 24) + b)
        blocks.append(torch.randn(_NOISE_BLOCK, dim, generator=gen))
    if not blocks:
        return torch.zeros(dim, 0, device=device)
    return torch.cat(blocks)[:length].T.contiguous().to(device)


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis of ``x`` to ``length`` (shapes only: no host sync)."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]))


def concat_padded(
    a: torch.Tensor, a_len: torch.Tensor, b: torch.Tensor, b_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item concatenation of padded sequences ``a`` ``[B, Ta]`` and ``b`` ``[B, Tb]`` -> ``[B, Ta + Tb]``, lengths.

    Item ``i`` becomes ``a[i, :a_len[i]]`` followed by ``b[i, :b_len[i]]`` then zeros; built with a
    gather, so there is no host sync.
    """
    j = torch.arange(a.shape[1] + b.shape[1], device=a.device)[None, :]
    both = torch.cat([a, b], dim=1)
    # Position j reads a[j] while j < a_len, else b[j - a_len], i.e. column Ta + j - a_len of `both`.
    idx = torch.where(j < a_len[:, None], j, a.shape[1] + j - a_len[:, None]).clamp(max=both.shape[1] - 1)
    length = a_len + b_len
    return both.gather(1, idx) * (j < length[:, None]).to(both.dtype), length


def shift_left(x: torch.Tensor, offset: torch.Tensor, length: int) -> torch.Tensor:
    """``x[i, ..., offset[i] : offset[i] + length]`` for every item (zero beyond ``x``'s end)."""
    j = torch.arange(length, device=x.device)[None, :] + offset[:, None]
    inside = j < x.shape[-1]
    idx = j.clamp(max=x.shape[-1] - 1)
    lead = x.shape[1:-1]
    idx = idx.view(idx.shape[0], *([1] * len(lead)), length).expand(x.shape[0], *lead, length)
    return x.gather(-1, idx) * inside.view(inside.shape[0], *([1] * len(lead)), length).to(x.dtype)


def smooth_pitch(
    x: torch.Tensor, frames: int, history: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal moving average over ``frames`` frames of channel 0 of latents ``x [B, D, T]`` (raw space).

    ``history [B, frames - 1]``: channel 0's raw values just before ``x`` (``None``: the first frame
    repeated), so chunks smoothed one after another with the returned history equal the whole
    sequence smoothed at once. Causal: a frame never waits for later ones (streaming stays exact).
    """
    if frames <= 1 or x.shape[-1] == 0:
        return x, history
    c = x[:, 0]
    past = c[:, :1].expand(-1, frames - 1) if history is None else history.to(c)
    full = torch.cat([past, c], dim=-1)
    out = x.clone()
    out[:, 0] = F.avg_pool1d(full[:, None], frames, stride=1)[:, 0]
    return out, full[:, full.shape[-1] - (frames - 1) :]


class FlowModel(nn.Module):
    """Token-to-latent flow-matching decoder (Stage 2): ``forward(batch)`` -> named losses; ``sample`` -> latents."""

    def __init__(
        self,
        encoder: TokenEncoder,
        estimator: Estimator,
        matching: FlowMatching,
        latent_dim: int,
        speaker: nn.Module | None = None,
        spk_dim: int | None = None,
        latent_stats: str | None = None,
        speaker_checkpoint: str | None = None,
        speaker_prefix: str = "speaker.",
        freeze_speaker: bool = False,
        prompt_prob: float = 0.5,
        prompt_max_ratio: float = 0.3,
        streaming_prob: float = 0.0,
        cv_seed: int = 1234,
        pitch_smoothing: int = 0,
    ):
        super().__init__()
        if int(pitch_smoothing) != pitch_smoothing or pitch_smoothing < 0:
            raise ConfigError(f"flow: pitch_smoothing must be a whole number of frames >= 0, not {pitch_smoothing!r}")
        if encoder.out_dim != latent_dim:
            raise ConfigError(f"flow: encoder out_dim {encoder.out_dim} != latent_dim {latent_dim}")
        if estimator.in_channels != latent_dim or estimator.out_channels != latent_dim:
            raise ConfigError(
                f"flow: estimator in/out channels {estimator.in_channels}/{estimator.out_channels} "
                f"!= latent_dim {latent_dim}"
            )
        if estimator.mu_channels != latent_dim or estimator.cond_channels != latent_dim:
            raise ConfigError(
                f"flow: estimator mu/cond channels {estimator.mu_channels}/{estimator.cond_channels} "
                f"must equal latent_dim {latent_dim}"
            )
        est_chunk = getattr(estimator, "chunk_size", 0)
        if est_chunk and encoder.chunk_size and est_chunk != encoder.chunk_size * encoder.ratio:
            raise ConfigError(
                f"flow: estimator chunk_size {est_chunk} != encoder chunk_size {encoder.chunk_size} "
                f"x ratio {encoder.ratio}"
            )
        if streaming_prob > 0 and not getattr(estimator, "causal", False):
            raise ConfigError(
                f"flow: streaming_prob {streaming_prob} needs a causal estimator (causal: true): the "
                f"convolutions of a non-causal {type(estimator).__name__} leak future frames into each chunk"
            )
        if getattr(matching, "two_times", False) != getattr(estimator, "interval_time", False):
            raise ConfigError(
                f"flow: {type(matching).__name__} needs an estimator with interval_time="
                f"{getattr(matching, 'two_times', False)} (MeanFlow takes a second time r; CFM does not)"
            )
        if (speaker is None) != (estimator.spk_channels == 0):
            raise ConfigError("flow: give a speaker module together with estimator spk_channels > 0, or neither")
        self.encoder, self.estimator, self.matching = encoder, estimator, matching
        self.latent_dim, self.ratio = latent_dim, encoder.ratio
        self.prompt_prob, self.prompt_max_ratio = prompt_prob, prompt_max_ratio
        self.streaming_prob, self.cv_seed = streaming_prob, cv_seed
        # For a harmonic codec (latent channel 0 = its pitch): a sampled pitch track that the tokens do not
        # determine jitters, and the codec's comb renders jitter as roughness (smooth_pitch).
        self.pitch_smoothing = int(pitch_smoothing)
        self.speaker = speaker
        spk_dim = spk_dim or getattr(speaker, "dim", 192)
        self.spk_proj = nn.Linear(spk_dim, estimator.spk_channels) if speaker is not None else None
        if speaker_checkpoint:
            if speaker is None:
                raise ConfigError("flow: speaker_checkpoint given but no speaker module")
            self._load_speaker(speaker_checkpoint, speaker_prefix)
        self.freeze_speaker = bool(freeze_speaker and speaker is not None)
        if self.freeze_speaker:
            self.speaker.requires_grad_(False)
            self.speaker.eval()
        if latent_stats:
            mean, std = load_latent_stats(latent_stats, latent_dim)
        else:
            log.info("flow: no latent_stats given; latents are used unnormalised (mean 0, std 1)")
            mean, std = torch.zeros(latent_dim), torch.ones(latent_dim)
        # Persistent buffers: the statistics travel with the checkpoint and are undone at inference.
        self.register_buffer("latent_mean", mean.clone())
        self.register_buffer("latent_std", std.clone())

    # ------------------------------------------------------------------------------------ helpers

    def _load_speaker(self, path: str, prefix: str) -> None:
        """Load the speaker extractor's weights from an LM checkpoint (``prefix``-ed keys)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"flow: speaker_checkpoint not found: {p}")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not picked:
            raise ConfigError(f"flow: no '{prefix}*' weights in speaker_checkpoint {p}")
        self.speaker.load_state_dict(picked, strict=True)
        log.info("flow: speaker extractor loaded from %s (%d tensors)", p, len(picked))

    def train(self, mode: bool = True) -> FlowModel:
        """Train mode everywhere except a frozen speaker extractor (its dropout/norm stay in eval)."""
        super().train(mode)
        if self.freeze_speaker:
            self.speaker.eval()
        return self

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw DAC-VAE ``mu`` ``[B, D, T]`` -> the standardised space the flow works in."""
        return (latent.float() - self.latent_mean[:, None]) / self.latent_std[:, None]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`."""
        return x.float() * self.latent_std[:, None] + self.latent_mean[:, None]

    def speaker_condition(
        self,
        spk: torch.Tensor | None = None,
        ref_audio: torch.Tensor | None = None,
        ref_audio_len: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Speaker input of the estimator ``[B, spk_channels]`` from a vector or reference audio."""
        if self.speaker is None:
            return None
        if spk is None:
            if ref_audio is None or ref_audio_len is None:
                raise ValueError("flow: this model needs a speaker vector `spk` or `ref_audio` + `ref_audio_len`")
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_speaker):
                spk = self.speaker(ref_audio, ref_audio_len)
        return self.spk_proj(F.normalize(spk.float(), dim=-1))

    def _streaming(self) -> bool:
        return self.training and self.streaming_prob > 0 and float(torch.rand(())) < self.streaming_prob

    # ----------------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Flow-matching losses for a padded batch (keys: speech_token(_len), latent(_len), ref_audio(_len))."""
        token, token_len = batch["speech_token"], batch["speech_token_len"]
        latent, latent_len = batch["latent"], batch["latent_len"]
        streaming = self._streaming()
        mu, mask = self.encoder(token, token_len, streaming=streaming)
        B, _, T = mu.shape
        # The pipeline aligns lengths (token_len * ratio == latent_len); a mismatch is not trusted:
        # only frames both sides cover are used, and the mismatch rate is logged.
        latent = fit_length(latent, T)
        mask = mask & lengths_to_mask(latent_len, T)
        x1 = self.normalise(latent) * mask[:, None, :]
        # Eval draws (t, noise, prompts, dropout) from a fixed seed so CV losses compare across checkpoints.
        gen = None if self.training else torch.Generator(device=mu.device).manual_seed(self.cv_seed)
        spk = self.speaker_condition(None, batch.get("ref_audio"), batch.get("ref_audio_len"))

        # Prompt: with prob. prompt_prob, the first 0..max_ratio of the item's tokens are given as condition.
        n_tok = mask.sum(dim=1) // self.ratio
        use = torch.rand(B, device=mu.device, generator=gen) < self.prompt_prob
        frac = torch.rand(B, device=mu.device, generator=gen) * self.prompt_max_ratio
        prompt_len = (frac * n_tok).floor().long() * self.ratio * use
        prompt = lengths_to_mask(prompt_len, T) & mask
        cond = x1 * prompt[:, None, :]
        out = self.matching.loss(
            self.estimator,
            x1,
            mask,
            {"mu": mu, "spk": spk, "cond": cond},
            loss_mask=mask & ~prompt,
            generator=gen,
            streaming=streaming,
        )
        out["len_mismatch"] = (latent_len != token_len * self.ratio).float().mean()
        return out

    # ---------------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def sample(
        self,
        speech_token: torch.Tensor,
        speech_token_len: torch.Tensor,
        spk: torch.Tensor | None = None,
        ref_audio: torch.Tensor | None = None,
        ref_audio_len: torch.Tensor | None = None,
        prompt_token: torch.Tensor | None = None,
        prompt_token_len: torch.Tensor | None = None,
        prompt_latent: torch.Tensor | None = None,
        n_steps: int | None = None,
        cfg_w: float | None = None,
        solver: str | None = None,
        seed: int = 0,
        streaming: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``[B, D, N·ratio]`` in raw DAC-VAE ``mu`` space and their lengths ``[B]``.

        ``spk``: raw speaker vectors ``[B, spk_dim]``, or ``ref_audio``/``ref_audio_len`` to extract
        them. Optional prompt: ``prompt_token`` ``[B, P]`` with ``prompt_token_len`` and the matching
        raw ``prompt_latent`` ``[B, D, ≥ P·ratio]``; its frames condition the solve and are cut from
        the output. Padded frames of the output are 0.
        """
        r = self.ratio
        spk_c = self.speaker_condition(spk, ref_audio, ref_audio_len)
        out_frames = speech_token.shape[1] * r
        if prompt_token is not None:
            if prompt_token_len is None or prompt_latent is None:
                raise ValueError("flow.sample: a prompt needs prompt_token, prompt_token_len and prompt_latent")
            tokens, tokens_len = concat_padded(prompt_token, prompt_token_len, speech_token, speech_token_len)
            prompt_frames = prompt_token_len * r
        else:
            tokens, tokens_len = speech_token, speech_token_len
            prompt_frames = torch.zeros_like(speech_token_len)
        mu, mask = self.encoder(tokens, tokens_len, streaming=streaming)
        B, D, T = mu.shape
        cond = torch.zeros_like(mu)
        if prompt_token is not None:
            p_lat = fit_length(prompt_latent, prompt_token.shape[1] * r)
            p_mask = lengths_to_mask(prompt_frames, p_lat.shape[-1])[:, None, :]
            cond = fit_length(self.normalise(p_lat) * p_mask, T)
        noise = seeded_noise(seed, D, T, mu.device)[None].expand(B, -1, -1)
        x = self.matching.sample(
            self.estimator,
            noise,
            mask,
            {"mu": mu, "spk": spk_c, "cond": cond},
            n_steps=n_steps,
            cfg_w=cfg_w,
            solver=solver,
            streaming=streaming,
        )
        x = shift_left(x, prompt_frames, out_frames)
        out_len = speech_token_len * r
        out_mask = lengths_to_mask(out_len, out_frames)[:, None, :]
        latent, _ = smooth_pitch(self.denormalise(x), self.pitch_smoothing)
        return latent * out_mask, out_len

    @torch.inference_mode()
    def media(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A figure of real vs sampled latents of the batch's first item, for the trainer's logs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n_tok = batch["speech_token_len"][:1]
        kwargs = {}
        if self.speaker is not None:
            kwargs = {"ref_audio": batch["ref_audio"][:1], "ref_audio_len": batch["ref_audio_len"][:1]}
        fake, fake_len = self.sample(batch["speech_token"][:1], n_tok, **kwargs)
        frames = int(fake_len[0])
        real = batch["latent"][0, :, :frames].float().cpu()
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for ax, data, title in ((axes[0], real, "DAC-VAE mu"), (axes[1], fake[0, :, :frames].cpu(), "flow sample")):
            ax.imshow(data.numpy(), aspect="auto", origin="lower", interpolation="nearest")
            ax.set_title(title)
        fig.tight_layout()
        return {"image/latent": fig}
