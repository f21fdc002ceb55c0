"""The blocked InfoNCE against plain autograd and a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.contrastive import info_nce, info_nce_reference


def test_hand_computed_two_rows():
    """a = [(1, 0), (0, 1)], b = a: each row's positive logit is 1, its negative 0, so the loss is
    log(e + 1) - 1 per row."""
    a = torch.eye(2, dtype=torch.float64)
    assert info_nce(a, a.clone()).item() == pytest.approx(math.log(math.e + 1) - 1, rel=1e-12)
    # temperature 0.5 doubles the logits
    assert info_nce(a, a.clone(), temperature=0.5).item() == pytest.approx(
        math.log(math.e**2 + 1) - 2, rel=1e-12
    )


@pytest.mark.parametrize("n,block,temperature", [(37, 8, 1.0), (37, 37, 0.2), (5, 100, 0.01), (64, 7, 3.0)])
def test_matches_autograd_reference(n, block, temperature):
    torch.manual_seed(n)
    a = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    loss = info_nce(a, b, temperature, block=block)
    ga, gb = torch.autograd.grad(3.0 * loss, [a, b])  # a non-unit upstream gradient
    ref = info_nce_reference(a, b, temperature)
    ra, rb = torch.autograd.grad(3.0 * ref, [a, b])
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_large_logits_do_not_overflow():
    """Unnormalised inputs with logits in the hundreds take the per-row maximum path."""
    torch.manual_seed(0)
    a = torch.randn(20, 4) * 30
    b = torch.randn(20, 4) * 30
    loss = info_nce(a, b, 0.1, block=6)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, info_nce_reference(a, b, 0.1), rtol=1e-5, atol=1e-3)


def test_gradient_of_one_view_only():
    torch.manual_seed(1)
    a = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, 3, dtype=torch.float64)
    (ga,) = torch.autograd.grad(info_nce(a, b, block=3), [a])
    (ra,) = torch.autograd.grad(info_nce_reference(a, b), [a])
    torch.testing.assert_close(ga, ra)


def test_bad_shapes_and_temperature():
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.zeros(3, 2), torch.zeros(3, 2), temperature=0)
