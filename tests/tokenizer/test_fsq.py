"""FSQ quantiser: exact id space, id <-> code round trip, straight-through gradients, usage stats."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speech.tokenizer.fsq import FSQ, FSQEmbedding, FSQLinear, codebook_stats


def _reference_id(grid_code: list[int], levels: list[int]) -> int:
    """Mixed-radix id by hand: digit_i = code_i + L_i // 2, place value prod(levels[:i])."""
    ident, place = 0, 1
    for value, level in zip(grid_code, levels):
        digit = value + level // 2
        assert 0 <= digit < level
        ident += digit * place
        place *= level
    return ident


def test_default_is_8_by_3_levels_6561_ids():
    fsq = FSQ()
    assert fsq.dim == 8 and fsq.levels_list == [3] * 8
    assert fsq.codebook_size == 6561


def test_every_one_of_the_6561_codes_is_reachable_and_ids_are_exactly_0_to_6560():
    fsq = FSQ()
    grid = fsq.ids_to_codes(torch.arange(6561), normalised=False)  # [6561, 8]
    assert set(grid.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.unique(grid, dim=0).shape[0] == 6561
    # Pre-images through the bound (atanh of the grid value / h) land on each code exactly.
    z = torch.atanh(grid / fsq._h)
    codes, ids = fsq(z)
    assert torch.equal(ids, torch.arange(6561))
    assert torch.equal(codes, grid)  # 3 levels: normalised code == grid value
    # Arbitrary inputs, however large, never leave the id range.
    _, ids = fsq(torch.randn(20000, 8) * 100)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) <= 6560


@pytest.mark.parametrize("levels", [[3] * 8, [8, 5, 5, 5], [4, 2, 3], [2, 7]])
def test_id_code_round_trip_and_reference_ids(levels):
    fsq = FSQ(levels)
    size = math.prod(levels)
    ids = torch.arange(size)
    grid = fsq.ids_to_codes(ids, normalised=False)
    assert torch.equal(fsq.codes_to_ids(grid, normalised=False), ids)
    assert torch.equal(fsq.codes_to_ids(fsq.ids_to_codes(ids)), ids)
    for i in torch.randint(0, size, (50,)).tolist():
        assert _reference_id([int(v) for v in grid[i]], levels) == i
    # Each channel spans exactly its L grid values: odd L symmetric, even L one more below zero.
    for c, level in enumerate(levels):
        assert grid[:, c].unique().tolist() == [float(v) for v in range(-(level // 2), level - level // 2)]


@pytest.mark.parametrize("levels", [[4, 2, 3], [5, 3], [8, 6]])
def test_random_inputs_cover_the_whole_codebook_and_zero_maps_to_the_centre(levels):
    fsq = FSQ(levels)
    codes, ids = fsq(torch.randn(40000, len(levels)) * 2)
    assert sorted(ids.unique().tolist()) == list(range(math.prod(levels)))
    assert torch.equal(fsq.codes_to_ids(codes), ids)
    assert torch.allclose(fsq.bound(torch.zeros(len(levels))), torch.zeros(len(levels)), atol=1e-6)
    assert float(codes.abs().max()) <= 1.0


def test_gradient_passes_straight_through_the_rounding():
    fsq = FSQ()
    z = (torch.randn(64, 8) * 1.5).requires_grad_()
    weight = torch.randn(64, 8)
    codes, _ = fsq(z)
    (codes * weight).sum().backward()
    # Reference: the same loss with the rounding removed (d round / d x := 1).
    z_ref = z.detach().clone().requires_grad_()
    (fsq.bound(z_ref) / fsq.half_width * weight).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z_ref.grad)
    # ...while the forward value is the rounded one.
    assert torch.equal(codes.detach(), torch.round(fsq.bound(z.detach())))


def test_bf16_autocast_gives_the_fp32_ids():
    fsq = FSQ()
    z = torch.randn(4, 50, 8)
    codes32, ids32 = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes, ids = fsq(z)
    assert codes.dtype == torch.float32
    assert torch.equal(ids, ids32) and torch.equal(codes, codes32)


def test_bad_levels_fail_fast():
    with pytest.raises(ValueError, match="levels"):
        FSQ([3, 1])
    with pytest.raises(ValueError, match="channels"):
        FSQ()(torch.zeros(2, 7))


def test_codebook_stats_match_a_numpy_reference():
    ids = torch.randint(0, 50, (3, 40))
    mask = torch.rand(3, 40) > 0.3
    stats = codebook_stats(ids, mask, 6561)
    valid = ids[mask].numpy()
    _, counts = np.unique(valid, return_counts=True)
    p = counts / counts.sum()
    assert stats["code_usage"].item() == pytest.approx(len(counts) / 6561)
    assert stats["code_perplexity"].item() == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    # One code only -> perplexity 1; padding never counts.
    valid = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    one = codebook_stats(torch.full((2, 5), 7), valid, 6561)
    assert one["code_perplexity"].item() == pytest.approx(1.0) and one["code_usage"].item() == pytest.approx(1 / 6561)


@pytest.mark.parametrize("levels", [[3] * 8, [8, 5, 5, 5], [2, 4, 3]])
def test_fsq_embedding_is_the_sum_of_its_digits_rows(levels):
    torch.manual_seed(0)
    emb = FSQEmbedding(levels, dim=6)
    ids = torch.randint(0, math.prod(levels), (3, 5))
    out = emb(ids)
    assert out.shape == (3, 5, 6)
    for b in range(3):
        for n in range(5):
            rest, expect = int(ids[b, n]), torch.zeros(6)
            for i, level in enumerate(levels):  # digit i by hand, least significant first
                expect += emb.digits.weight[sum(levels[:i]) + rest % level]
                rest //= level
            torch.testing.assert_close(out[b, n], expect)


def test_fsq_embedding_shares_rows_between_ids_and_adds_an_optional_id_table():
    torch.manual_seed(0)
    emb = FSQEmbedding([3, 3], dim=4)
    # ids 1 (digits 1, 0) and 4 (digits 1, 1) share digit 0; a gradient through id 1 alone moves id 4
    before = emb(torch.tensor([4])).detach()
    emb(torch.tensor([1])).sum().backward()
    with torch.no_grad():
        emb.digits.weight -= emb.digits.weight.grad
    assert not torch.allclose(emb(torch.tensor([4])), before)
    with_table = FSQEmbedding([3, 3], dim=4, per_id=True)
    with torch.no_grad():
        with_table.table.weight[4] = 1.0
        plain = with_table.digits(torch.tensor([1, 4])).sum(0)  # id 4: digits (1, 1) -> rows 1 and 3 + 1
    torch.testing.assert_close(with_table(torch.tensor(4)), plain + 1.0)


def test_fsq_embedding_extra_ids_have_rows_of_their_own():
    torch.manual_seed(0)
    emb = FSQEmbedding([3, 2], dim=4, extra=3)  # grid ids 0..5, then 6, 7, 8 (e.g. eos, reserved, fill)
    assert emb.num_embeddings == 9
    ids = torch.tensor([[0, 5, 6, 8]])
    out = emb(ids)
    torch.testing.assert_close(out[0, 2], emb.extra.weight[0])
    torch.testing.assert_close(out[0, 3], emb.extra.weight[2])
    rows = emb.digits.weight  # digit 0 in rows 0..2, digit 1 in rows 3..4
    torch.testing.assert_close(out[0, 0], rows[0] + rows[3])  # id 0: digits (0, 0)
    torch.testing.assert_close(out[0, 1], rows[2] + rows[4])  # id 5: digits (2, 1)
    table = emb.rows()
    assert table.shape == (9, 4)
    torch.testing.assert_close(table[[0, 5, 6, 8]], out[0])


def test_fsq_linear_adds_digit_rows_to_per_id_weights():
    torch.manual_seed(0)
    head = FSQLinear(4, [3, 2], extra=2)
    h = torch.randn(5, 4)
    torch.testing.assert_close(head(h), head.linear(h))  # digit rows start at zero: a plain linear layer
    with torch.no_grad():
        head.digits.digits.weight.normal_()
    logits = head(h)
    for i in range(8):
        w = head.linear.weight[i].clone()
        if i < 6:  # grid id: + the rows of its two digits (digit 0 in 0..2, digit 1 in 0..1)
            w += head.digits.digits.weight[i % 3] + head.digits.digits.weight[3 + i // 3]
        torch.testing.assert_close(logits[:, i], h @ w + head.linear.bias[i])


def test_fsq_linear_reuses_its_weight_without_autograd_until_a_parameter_changes():
    torch.manual_seed(0)
    head = FSQLinear(4, [3, 2], extra=1)
    h = torch.randn(2, 4)
    with torch.no_grad():
        first = head.weight
        assert head.weight is first  # built once for decoding
        head.digits.digits.weight.normal_()  # in place, as an optimizer step or load_state_dict does
        rebuilt = head.weight
        assert rebuilt is not first
        torch.testing.assert_close(rebuilt, head._weight())
        torch.testing.assert_close(head(h), h @ head._weight().T + head.linear.bias)
    with torch.inference_mode():
        torch.testing.assert_close(head(h), h @ rebuilt.T + head.linear.bias)
    assert head.weight.requires_grad and head.weight is not rebuilt  # training builds it with its graph
