"""The training fast paths compute the same thing as the torch functions they replace."""

from __future__ import annotations

import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from mtcli.model.dropout import Dropout, dropout_mask
from mtcli.training.optim import label_smoothed_nll
from mtcli.training.trainer import keep_freed_memory


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_smoothed_nll_matches_cross_entropy(smoothing, dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=dtype, requires_grad=True)
    target = torch.randint(1, 50, (3, 7))
    target[0, 4:] = 0  # padding
    loss, nll = label_smoothed_nll(logits, target, smoothing, 0)
    (grad,) = torch.autograd.grad(loss * 0.37, logits)
    flat, flat_target = logits.reshape(-1, 50), target.reshape(-1)
    ref = F.cross_entropy(flat, flat_target, ignore_index=0, label_smoothing=smoothing, reduction="sum")
    ref_nll = F.cross_entropy(flat, flat_target, ignore_index=0, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.37, logits)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert abs(loss.item() - ref.item()) < tol * ref.item()
    assert abs(nll.item() - ref_nll.item()) < tol * ref_nll.item()
    assert torch.allclose(grad, ref_grad, atol=tol * 1e-2)
    assert not nll.requires_grad


def test_label_smoothed_nll_gradcheck_and_retain_graph():
    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([3, 0, 5, 7, 0, 10])
    assert torch.autograd.gradcheck(lambda x: label_smoothed_nll(x, target, 0.1, 0)[0], (logits,))
    loss, _ = label_smoothed_nll(logits, target, 0.1, 0)
    (a,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (b,) = torch.autograd.grad(loss, logits)  # a second backward sees the same saved tensors
    assert torch.equal(a, b)


def test_dropout_mask_distribution_and_seed():
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([500, 1000]), 0.1)
    assert mask.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert abs(float(mask.gt(0).float().mean()) - 0.9) < 0.003
    torch.manual_seed(5)
    a = dropout_mask(torch.Size([4, 9]), 0.3)
    torch.manual_seed(5)
    assert torch.equal(a, dropout_mask(torch.Size([4, 9]), 0.3))


def test_dropout_module_gradient_and_modes():
    drop = Dropout(0.2)
    x = torch.randn(50, 16, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.8))
    assert torch.all(x.grad[~kept] == 0)
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert isinstance(drop, torch.nn.Dropout) and not list(drop.state_dict())


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_sets_both_malloc_options():
    """On glibc both mallopt calls succeed (a wrong parameter number would make them return 0)."""
    assert keep_freed_memory() is True
