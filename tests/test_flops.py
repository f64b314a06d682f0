"""FLOP counting counts attention on CPU; the peak measurement returns sane figures."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from speech.utils.flops import count_flops, matmul_peak_gflops


def test_sdpa_is_counted_on_cpu():
    b, h, t, d = 2, 4, 64, 32
    q = torch.randn(b, h, t, d, requires_grad=True)
    fwd = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert fwd == 2 * (2 * b * h * t * t * d)  # QK^T and PV, 2 FLOPs per multiply-add
    both = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    # backward: recompute QK^T, then dV, dP, dQ, dK: five matmuls of forward size = 2.5x forward
    assert both == fwd + fwd * 5 // 2


def test_matmul_counted():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_peak_is_positive():
    peak = matmul_peak_gflops(torch.float32, sizes=(64,), seconds=0.05)
    assert set(peak) == {64} and peak[64] > 0


def test_grouped_query_attention_counts_expanded_heads():
    q = torch.randn(1, 4, 16, 8)
    kv = torch.randn(1, 2, 16, 8)
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True))
    assert flops == 2 * (2 * 1 * 4 * 16 * 16 * 8)
