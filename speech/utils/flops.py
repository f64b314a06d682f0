"""FLOP counting and this machine's matmul peak: the two halves of every utilisation figure.

``torch.utils.flop_counter`` counts SDPA only for the CUDA kernels; on CPU the fused attention
(``_scaled_dot_product_flash_attention_for_cpu``) would count as zero. :func:`count_flops`
registers the same formula for the CPU kernels so attention is never left out. Causal masks are
counted as full attention, as the standard formula does.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "matmul_peak_gflops"]

aten = torch.ops.aten
_registered = False


def _gqa(q_shape, k_shape, v_shape):
    """Grouped-query attention shares K/V heads; the FLOPs are those of K/V expanded to Q's heads."""
    heads = q_shape[1]
    return (k_shape[0], heads, *k_shape[2:]), (v_shape[0], heads, *v_shape[2:])


def _register_cpu_sdpa() -> None:
    global _registered
    if _registered:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, *_gqa(query.shape, key.shape, value.shape))

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(
            grad_out.shape, query.shape, *_gqa(query.shape, key.shape, value.shape)
        )

    _registered = True


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of ``fn`` (forward and whatever backward it runs), attention included."""
    _register_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_gflops(
    dtype: torch.dtype = torch.float32,
    sizes: tuple[int, ...] = (512, 1024, 2048),
    seconds: float = 1.0,
    device: str = "cpu",
) -> dict[int, float]:
    """Sustained square-matmul GFLOP/s for each size (best of repeated timed runs of ``seconds``)."""
    results = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up (and any lazy kernel selection)
        best = 0.0
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                reps += 1
                if device != "cpu":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / 3:
                    break
            best = max(best, 2 * n**3 * reps / elapsed / 1e9)
        results[n] = best
    return results
