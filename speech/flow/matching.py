"""Conditional flow matching: the training objective and the guided sampler, for any estimator.

Optimal-transport CFM (Lipman et al. 2023, eq. 20-23; CosyVoice2's form) with ``t = 0`` noise and
``t = 1`` data:

    x_t = (1 - (1 - σ_min)·t)·x0 + t·x1,      u = x1 - (1 - σ_min)·x0,

and the loss ``|v(x_t, t | c) - u|²`` averaged over scored frames and channels. The estimator predicts
``v`` itself (``prediction: velocity``, CosyVoice2's choice) or the data ``x̂1`` (``prediction: data``,
Li & He 2025, "Back to basics: let denoising generative models denoise"), turned into the velocity
``v = (x̂1 - (1 - σ_min)·x_t) / (1 - (1 - σ_min)·t)`` (denominator clipped at ``data_clip``) before the
same loss and the same sampler. Why data: a small, under-trained estimator that cannot yet read the
noise out of ``x_t`` predicts about the conditional mean either way; as a velocity that mean carries
the starting noise through to the sample (which ends up over-dispersed and unintelligible), as data
the sampler still lands on the mean. Nothing here knows
about tokens or speakers: the caller passes an estimator ``estimator(x, mask, t=t, **conditions)``
and tensors, so Stage 2 and the flow autoencoder share this module.

Options (each a constructor argument, set from YAML): time sampler, immiscible noise assignment,
contrastive flow matching (ΔFM), classifier-free-guidance dropout of all conditions together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from speech.config import ConfigError
from speech.flow.assignment import IndependentNoise, KNearestNoise, LinearSumAssignment, NoiseAssignment
from speech.flow.solver import NFE_PER_STEP, SOLVERS, integrate
from speech.flow.timesteps import SCHEDULES, CosineTime, LogitNormalTime, TimeSampler, UniformTime

__all__ = [
    "masked_mse",
    "derangement",
    "conditional_pair",
    "FlowMatching",
    "TIME_SAMPLERS",
    "ASSIGNMENTS",
    "PREDICTIONS",
]

Conditions = dict[str, "torch.Tensor | None"]

TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "cosine": CosineTime,
}
PREDICTIONS = ("velocity", "data")  # what the estimator outputs (see the module docstring)
ASSIGNMENTS: dict[str, type[NoiseAssignment]] = {
    "independent": IndependentNoise,
    "lsa": LinearSumAssignment,
    "knn": KNearestNoise,
}


def _build(spec: Any, registry: dict[str, type], args: dict[str, Any], what: str) -> Any:
    """An option given as an object passes through; a name is built from ``registry`` with ``args``."""
    if not isinstance(spec, str):
        return spec
    if spec not in registry:
        raise ConfigError(f"flow matching: unknown {what} {spec!r}; choose from {sorted(registry)}")
    try:
        return registry[spec](**args)
    except TypeError as exc:
        raise ConfigError(f"flow matching: bad arguments {args} for {what} {spec!r} ({exc})") from None


def masked_mse(v: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(v - u)²`` over the masked frames of the whole batch and all channels.

    ``v``, ``u`` ``[B, D, T]``, ``mask`` ``[B, T]``: the sum of squared errors on valid frames divided
    by ``D × (number of valid frames)``, so each frame counts once however the batch is padded.
    """
    m = mask[:, None, :].to(torch.float32)
    err = (v.float() - u.float()).square() * m
    return err.sum() / (m.sum() * v.shape[1]).clamp_min(1.0)


def derangement(n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation ``[n]`` with no fixed point (n ≥ 2): one random cycle through all items."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    order = torch.randperm(n, device=device, generator=generator)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)  # order[i] -> order[i + 1]: a single n-cycle
    return perm


def _drop(conditions: Conditions, keep: torch.Tensor) -> Conditions:
    """Zero every condition of the items where ``keep`` is False."""
    out: Conditions = {}
    for name, value in conditions.items():
        if value is None:
            out[name] = None
        else:
            out[name] = value * keep.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
    return out


def conditional_pair(
    estimator: Callable[..., torch.Tensor],
    x: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    conditions: Conditions,
    r: torch.Tensor | None = None,
    **estimator_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator's output with the ``conditions`` and with all of them zeroed (``v(x | c)``, ``v(x | ∅)``,
    float32), in one call on a batch of 2B. ``r`` ``[B]`` (MeanFlow's second time) is passed too when given."""
    doubled = {name: None if c is None else torch.cat([c, torch.zeros_like(c)]) for name, c in conditions.items()}
    times = {"t": torch.cat([t, t])}
    if r is not None:
        times["r"] = torch.cat([r, r])
    v = estimator(torch.cat([x, x]), torch.cat([mask, mask]), **times, **doubled, **estimator_kwargs).float()
    return v.chunk(2)


class FlowMatching:
    """OT-CFM loss and ODE sampling with classifier-free guidance, estimator- and data-agnostic.

    ``time_sampler`` is a :class:`TimeSampler` or a name of :data:`TIME_SAMPLERS` built with
    ``time_sampler_args``; ``immiscible`` is ``None`` (independent noise), a name of
    :data:`ASSIGNMENTS` (``lsa``: batch minimum-cost matching, ``knn``: best of ``immiscible_k``
    draws) or a :class:`NoiseAssignment`. Names keep every switch a plain, overridable config value.
    """

    two_times = False  # the estimator is called with one time t (MeanFlow: also r)

    def __init__(
        self,
        sigma_min: float = 1e-6,
        time_sampler: str | TimeSampler = "uniform",
        time_sampler_args: dict[str, float] | None = None,
        immiscible: str | NoiseAssignment | None = None,
        immiscible_k: int = 4,
        cfg_dropout: float = 0.2,
        contrastive_weight: float = 0.0,
        n_steps: int = 10,
        cfg_w: float = 0.7,
        solver: str = "euler",
        schedule: str = "cosine",
        prediction: str = "velocity",
        data_clip: float = 0.05,
    ):
        if not 0.0 <= cfg_dropout < 1.0:
            raise ConfigError(f"flow matching: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        if solver not in SOLVERS or schedule not in SCHEDULES:
            raise ConfigError(
                f"flow matching: solver/schedule must be in {sorted(SOLVERS)} / {sorted(SCHEDULES)}, "
                f"got {solver!r}/{schedule!r}"
            )
        if contrastive_weight < 0:
            raise ConfigError(f"flow matching: contrastive_weight must be >= 0, got {contrastive_weight}")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"flow matching: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if not 0.0 < data_clip <= 1.0:
            raise ConfigError(f"flow matching: data_clip must be in (0, 1], got {data_clip}")
        self.prediction, self.data_clip = prediction, data_clip
        self.sigma_min = sigma_min
        self.time_sampler = _build(time_sampler, TIME_SAMPLERS, time_sampler_args or {}, "time_sampler")
        if immiscible is None:
            self.assignment: NoiseAssignment = IndependentNoise()
        else:
            self.assignment = _build(
                immiscible, ASSIGNMENTS, {"k": immiscible_k} if immiscible == "knn" else {}, "immiscible"
            )
        self.cfg_dropout = cfg_dropout
        self.contrastive_weight = contrastive_weight
        self.n_steps, self.cfg_w, self.solver, self.schedule = n_steps, cfg_w, solver, schedule

    def as_velocity(self, estimator: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The estimator as a velocity field (float32): itself, or its data prediction converted."""
        if self.prediction == "velocity":
            return estimator
        s = 1.0 - self.sigma_min

        def velocity(x: torch.Tensor, mask: torch.Tensor, *, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            x1 = estimator(x, mask, t=t, **kwargs).float()
            gap = (1.0 - s * t.float()).clamp_min(self.data_clip).view(-1, *([1] * (x1.dim() - 1)))
            return (x1 - s * x.float()) / gap

        return velocity

    # ------------------------------------------------------------------------------------ training

    def path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Point ``x_t`` on the conditional OT path and its velocity target ``u`` (``t`` ``[B]``)."""
        s = 1.0 - self.sigma_min
        tt = t.view(-1, *([1] * (x1.dim() - 1)))
        return (1.0 - s * tt) * x0 + tt * x1, x1 - s * x0

    def endpoints(
        self, x1: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x1`` (float32) and its assigned noise ``x0``, both ``[B, D, T]`` and 0 on padded frames."""
        fmask = mask[:, None, :].to(torch.float32)
        x1 = x1.float() * fmask
        return x1, self.assignment(x1, mask, generator) * fmask

    def drop_conditions(
        self,
        conditions: Conditions,
        mask: torch.Tensor,
        loss_mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Conditions, torch.Tensor]:
        """Guidance dropout: which items keep their conditions ``[B]`` (all without dropout), the conditions
        (zero for the others) and the scored frames ``[B, T]`` (``loss_mask & mask`` for kept items,
        ``mask`` for the others: the prompt they would have seen is gone too)."""
        B = mask.shape[0]
        loss_mask = mask if loss_mask is None else loss_mask & mask
        keep = torch.ones(B, dtype=torch.bool, device=mask.device)
        if self.cfg_dropout > 0:
            keep = torch.rand(B, device=mask.device, generator=generator) >= self.cfg_dropout
            conditions = _drop(conditions, keep)
            loss_mask = torch.where(keep[:, None], loss_mask, mask)
        return keep, conditions, loss_mask

    def loss(
        self,
        estimator: Callable[..., torch.Tensor],
        x1: torch.Tensor,
        mask: torch.Tensor,
        conditions: Conditions,
        loss_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        **estimator_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Named losses for data ``x1`` ``[B, D, T]`` (valid ``mask`` ``[B, T]``) given ``conditions``.

        ``t`` ``[B]`` fixes the flow times (default: drawn from the time sampler), for callers that
        tie them to something else (the flow autoencoder's noise synchronisation).

        ``loss_mask`` (default ``mask``) selects the scored frames of items whose conditions are kept;
        items whose conditions are dropped for guidance are scored on all valid frames, since the
        prompt they would have seen is gone too.
        """
        B = x1.shape[0]
        x1, x0 = self.endpoints(x1, mask, generator)
        if t is None:
            t = self.time_sampler(B, x1.device, generator)
        x_t, u = self.path(x0, x1, t)
        _, conditions, loss_mask = self.drop_conditions(conditions, mask, loss_mask, generator)
        v = self.as_velocity(estimator)(x_t, mask, t=t, **conditions, **estimator_kwargs).float()
        mse = masked_mse(v, u, loss_mask)
        out = {"flow_mse": mse}
        loss = mse
        if self.contrastive_weight > 0 and B > 1:
            # ΔFM (Stoica et al. 2025, eq. 6): push v away from another item's target flow.
            perm = derangement(B, x1.device, generator)
            negative = masked_mse(v, u[perm], loss_mask & mask[perm])
            loss = mse - self.contrastive_weight * negative
            out["contrastive"] = negative
        out["loss"] = loss
        return out

    # ----------------------------------------------------------------------------------- sampling

    def guided_velocity(
        self,
        estimator: Callable[..., torch.Tensor],
        x: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        conditions: Conditions,
        cfg_w: float,
        **estimator_kwargs: Any,
    ) -> torch.Tensor:
        """``(1 + w)·v(x | c) - w·v(x | ∅)``, both halves in one estimator call on a batch of 2B."""
        v_cond, v_uncond = conditional_pair(self.as_velocity(estimator), x, mask, t, conditions, **estimator_kwargs)
        return (1.0 + cfg_w) * v_cond - cfg_w * v_uncond

    def velocity(
        self,
        estimator: Callable[..., torch.Tensor],
        x: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        conditions: Conditions,
        cfg_w: float,
        **estimator_kwargs: Any,
    ) -> torch.Tensor:
        """Guided velocity; ``cfg_w = 0`` skips the unconditional half (it would cancel exactly)."""
        if cfg_w == 0:
            return self.as_velocity(estimator)(x, mask, t=t, **conditions, **estimator_kwargs).float()
        return self.guided_velocity(estimator, x, mask, t, conditions, cfg_w, **estimator_kwargs)

    def nfe(self, n_steps: int | None = None, cfg_w: float | None = None, solver: str | None = None) -> int:
        """Network evaluations (each of batch B; a guided call counts 2) of one :meth:`sample` call."""
        n_steps = self.n_steps if n_steps is None else n_steps
        cfg_w = self.cfg_w if cfg_w is None else cfg_w
        return n_steps * NFE_PER_STEP[solver or self.solver] * (2 if cfg_w else 1)

    def sample(
        self,
        estimator: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        mask: torch.Tensor,
        conditions: Conditions,
        n_steps: int | None = None,
        cfg_w: float | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        **estimator_kwargs: Any,
    ) -> torch.Tensor:
        """Integrate from ``noise`` ``[B, D, T]`` at t = 0 to data at t = 1; padded frames stay 0."""
        n_steps = self.n_steps if n_steps is None else n_steps
        cfg_w = self.cfg_w if cfg_w is None else cfg_w
        B = noise.shape[0]
        fmask = mask[:, None, :].to(torch.float32)

        def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.velocity(estimator, x, mask, t.expand(B), conditions, cfg_w, **estimator_kwargs) * fmask

        x = integrate(field, noise.float() * fmask, n_steps, solver or self.solver, schedule or self.schedule)
        return x * fmask
