"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): one-step flow matching by learning average velocities.

**Time convention.** The paper puts data at t = 0 and noise at t = 1 and integrates backwards; this
package puts noise at ``t = 0`` and data at ``t = 1`` (:mod:`speech.flow.timesteps`). Every formula
below is converted (paper time ``t' = 1 - t``, paper velocity ``v' = -v``, paper average velocity
``u' = -u``); ``(r, t)`` of the paper with ``r' ≤ t'`` become ours with ``t ≤ r``:

- path and instantaneous velocity, as in CFM: ``z_t = (1 - (1 - σ)·t)·x0 + t·x1``, ``v = x1 - (1 - σ)·x0``;
- average velocity over the step from ``t`` towards the data side ``r ≥ t``:
  ``u(z_t, r, t) = (z_r - z_t) / (r - t) = 1/(r - t) ∫_t^r v(z_s, s) ds`` (``u = v`` at ``r = t``);
- the MeanFlow identity (paper eq. 6, differentiated in ``t`` with ``r`` fixed) keeps its form:
  ``u = v - (t - r)·du/dt``, with the total derivative ``du/dt = v·∂_z u + ∂_t u`` (tangent
  ``(dz, dt, dr) = (v, 1, 0)``) from one forward-mode product (:func:`torch.func.jvp`);
- a step ``t -> r`` is ``x_r = x_t - (t - r)·u(x_t, r, t) = x_t + (r - t)·u``: towards data, the
  *plus* sign (the paper's ``z_r = z_t - (t' - r')·u'`` is the same step); one step from noise is
  ``x_1 = x_0 + u(x_0, r=1, t=0)``.

**Network input.** The estimator is called as ``estimator(z, mask, t=t, r=r, **conditions)`` and
embeds ``t`` and the interval ``h = r - t`` (see :mod:`speech.flow.estimator`, ``interval_time``);
``h = 0`` is the instantaneous velocity, so a CFM checkpoint is the exact starting point of a fine-tune.

**Loss.** ``Δ = u_θ(z_t, r, t) - sg(u_tgt)``; per item the mean of ``Δ²`` over its scored frames and
channels (a mean, not the paper's sum, so the weight does not depend on the item's length), weighted
by ``1 / sg(err + c)^p`` (paper §4.3, p = 1, c = 1e-3 by default), averaged over items. A share
``equal_share`` of the items (75%) has ``r = t`` (then ``u_tgt = v``: plain CFM); the others draw two
logit-normal times and sort them (``t`` the smaller, noisier one).

**Guidance folded into training** (paper §4.2, with the mixing scale κ of its appendix): for items
that keep their conditions the velocity in the target (and in the JVP tangent) is
``ṽ = ω·v + κ·u(z_t, t, t | c) + (1 - ω - κ)·u(z_t, t, t | ∅)`` with both ``u`` from the network
under stop-gradient; dropped items use ``ṽ = v``. At convergence ``u(·|c)`` is the guided field
``(1 + w)·v_c - w·v_∅`` with ``1 + w = ω / (1 - κ)``, so ``cfg_w`` here means what CFM's ``cfg_w``
means and ``ω = (1 + cfg_w)·(1 - κ)``; sampling then needs one network evaluation per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from speech.config import ConfigError
from speech.flow.matching import Conditions, FlowMatching, conditional_pair
from speech.flow.timesteps import time_grid

__all__ = ["MeanFlow", "mean_flow_target"]


def _select(conditions: Conditions, idx: torch.Tensor) -> Conditions:
    return {k: None if v is None else v[idx] for k, v in conditions.items()}


def mean_flow_target(
    estimator: Callable[..., torch.Tensor],
    z: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
    conditions: Conditions,
    **estimator_kwargs: Any,
) -> torch.Tensor:
    """``sg(v - (t - r)·du/dt)`` ``[B, D, T]``, ``du/dt`` by one JVP along ``(z, t, r) -> (v, 1, 0)``.

    Runs without autograd (the target is under stop-gradient) and with SDPA forced to its math
    backend: the fused CPU kernel ``_scaled_dot_product_flash_attention_for_cpu`` has no forward-mode
    derivative (torch 2.9, NotImplementedError), while the math path is made of ops that have one.
    Only this pass pays for it; the training forward keeps the fused kernel.
    """
    fmask = mask[:, None, :].to(torch.float32)

    def u_of(z_: torch.Tensor, t_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
        return estimator(z_, mask, t=t_, r=r_, **conditions, **estimator_kwargs).float() * fmask

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        _, dudt = torch.func.jvp(u_of, (z, t, r), (v * fmask, torch.ones_like(t), torch.zeros_like(r)))
    return (v - (t - r).view(-1, 1, 1) * dudt) * fmask


class MeanFlow(FlowMatching):
    """MeanFlow loss and 1/2/N-step sampling; same call signatures as :class:`FlowMatching`.

    Reuses CFM's path (``sigma_min``), noise assignment (``immiscible``) and condition dropout. The
    estimator must be built with ``interval_time=True``. ``time_mean``/``time_std`` parametrise the
    logit-normal of the (r, t) pairs in *our* convention (the paper's ``(-0.4, 1.0)`` is ``(0.4, 1.0)``
    here). ``cfg_w``/``cfg_kappa``: guidance trained into the network (see the module docstring).
    At sampling ``cfg_w`` (default 0) adds ordinary CFG on top, at two evaluations per step.
    """

    two_times = True

    def __init__(
        self,
        sigma_min: float = 1e-6,
        equal_share: float = 0.75,
        time_mean: float = 0.4,
        time_std: float = 1.0,
        immiscible: str | None = None,
        immiscible_k: int = 4,
        cfg_dropout: float = 0.1,
        cfg_w: float = 0.7,
        cfg_kappa: float = 0.0,
        weight_p: float = 1.0,
        weight_c: float = 1e-3,
        n_steps: int = 1,
        schedule: str = "linear",
    ):
        super().__init__(
            sigma_min=sigma_min,
            immiscible=immiscible,
            immiscible_k=immiscible_k,
            cfg_dropout=cfg_dropout,
            n_steps=n_steps,
            cfg_w=0.0,
            schedule=schedule,
        )
        if not 0.0 <= equal_share <= 1.0:
            raise ConfigError(f"meanflow: equal_share must be in [0, 1], got {equal_share}")
        if not 0.0 <= cfg_kappa < 1.0 or cfg_w < 0:
            raise ConfigError(f"meanflow: need cfg_w >= 0 and 0 <= cfg_kappa < 1, got {cfg_w}, {cfg_kappa}")
        if cfg_w > 0 and cfg_dropout == 0:
            raise ConfigError("meanflow: trained guidance (cfg_w > 0) needs cfg_dropout > 0 to learn u(z | ∅)")
        if weight_c <= 0 or weight_p < 0:
            raise ConfigError(f"meanflow: need weight_c > 0 and weight_p >= 0, got {weight_c}, {weight_p}")
        self.equal_share, self.time_mean, self.time_std = equal_share, time_mean, time_std
        self.train_cfg_w, self.cfg_kappa = cfg_w, cfg_kappa
        self.omega = (1.0 + cfg_w) * (1.0 - cfg_kappa)
        self.weight_p, self.weight_c = weight_p, weight_c

    # ------------------------------------------------------------------------------------ training

    def sample_times(
        self, n: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, r)`` ``[n]`` with ``t ≤ r``: a sorted logit-normal pair, or ``r = t`` for ``equal_share``."""
        pair = torch.sigmoid(self.time_mean + self.time_std * torch.randn(n, 2, device=device, generator=generator))
        t, r = pair.min(dim=1).values, pair.max(dim=1).values
        equal = torch.rand(n, device=device, generator=generator) < self.equal_share
        return t, torch.where(equal, t, r)

    def guided_target_velocity(
        self,
        estimator: Callable[..., torch.Tensor],
        z: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        v: torch.Tensor,
        conditions: Conditions,
        keep: torch.Tensor,
        **estimator_kwargs: Any,
    ) -> torch.Tensor:
        """``ṽ = ω·v + κ·u(z,t,t|c) + (1-ω-κ)·u(z,t,t|∅)`` for kept items, ``v`` for dropped ones (no grad)."""
        if self.train_cfg_w == 0 and self.cfg_kappa == 0:
            return v
        with torch.no_grad():
            u_c, u_u = conditional_pair(estimator, z, mask, t, conditions, r=t, **estimator_kwargs)
        guided = self.omega * v + self.cfg_kappa * u_c + (1.0 - self.omega - self.cfg_kappa) * u_u
        return torch.where(keep[:, None, None], guided, v) * mask[:, None, :].to(v.dtype)

    def loss(
        self,
        estimator: Callable[..., torch.Tensor],
        x1: torch.Tensor,
        mask: torch.Tensor,
        conditions: Conditions,
        loss_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **estimator_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Named losses: ``loss`` (adaptively weighted), ``flow_mse`` (unweighted, comparable to CFM's)."""
        B = x1.shape[0]
        fmask = mask[:, None, :].to(torch.float32)
        x1, x0 = self.endpoints(x1, mask, generator)
        t, r = self.sample_times(B, x1.device, generator)
        z, v = self.path(x0, x1, t)
        v = v * fmask
        keep, conditions, loss_mask = self.drop_conditions(conditions, mask, loss_mask, generator)
        v = self.guided_target_velocity(estimator, z, mask, t, v, conditions, keep, **estimator_kwargs)
        target = v.clone()
        # Items with r = t need no JVP (their target is v); the estimator treats items independently,
        # so the JVP runs on the others alone (a quarter of the batch by default).
        idx = (r != t).nonzero().flatten()
        if idx.numel():
            target[idx] = mean_flow_target(
                estimator, z[idx], mask[idx], t[idx], r[idx], v[idx], _select(conditions, idx), **estimator_kwargs
            )
        u = estimator(z, mask, t=t, r=r, **conditions, **estimator_kwargs).float()
        m = loss_mask[:, None, :].to(torch.float32)
        frames = m.sum(dim=(1, 2)) * x1.shape[1]
        err = ((u - target).square() * m).sum(dim=(1, 2)) / frames.clamp_min(1.0)
        weight = 1.0 / (err.detach() + self.weight_c).pow(self.weight_p)
        scored = (frames > 0).to(err.dtype)
        loss = (weight * err * scored).sum() / scored.sum().clamp_min(1.0)
        mse = ((u - target).square() * m).sum() / frames.sum().clamp_min(1.0)
        return {"flow_mse": mse, "loss": loss}

    # ----------------------------------------------------------------------------------- sampling

    def average_velocity(
        self,
        estimator: Callable[..., torch.Tensor],
        x: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        r: torch.Tensor,
        conditions: Conditions,
        cfg_w: float = 0.0,
        **estimator_kwargs: Any,
    ) -> torch.Tensor:
        """``u(x, r, t | c)``, with ordinary CFG on top if ``cfg_w > 0`` (then two evaluations)."""
        if cfg_w == 0:
            return estimator(x, mask, t=t, r=r, **conditions, **estimator_kwargs).float()
        u_c, u_u = conditional_pair(estimator, x, mask, t, conditions, r=r, **estimator_kwargs)
        return (1.0 + cfg_w) * u_c - cfg_w * u_u

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
        """Chained average-velocity steps ``x_r = x_t + (r - t)·u(x_t, r, t)`` from noise (t = 0) to data.

        ``solver`` is accepted for interface parity and ignored: a MeanFlow step is exact for the
        learnt average velocity, not an ODE scheme. Padded frames stay 0.
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        cfg_w = 0.0 if cfg_w is None else cfg_w
        B = noise.shape[0]
        fmask = mask[:, None, :].to(torch.float32)
        grid = time_grid(n_steps, schedule or self.schedule, device=noise.device)
        x = noise.float() * fmask
        for i in range(n_steps):
            t, r = grid[i].expand(B), grid[i + 1].expand(B)
            u = self.average_velocity(estimator, x, mask, t, r, conditions, cfg_w, **estimator_kwargs)
            x = x + (r - t).view(-1, 1, 1) * u * fmask
        return x * fmask

    def nfe(self, n_steps: int | None = None, cfg_w: float | None = None, solver: str | None = None) -> int:
        """Network evaluations (of batch B) of one :meth:`sample` call."""
        n_steps = self.n_steps if n_steps is None else n_steps
        return n_steps * (2 if cfg_w else 1)
