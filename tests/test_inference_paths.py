"""The decoding fast paths compute the same thing as the torch functions they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtcli.inference.search import topk_rows
from mtcli.model.layers import MANUAL_QUERIES, MultiHeadAttention, _attend


@pytest.mark.parametrize("rows,length", [(7, 257), (160, 8000), (9, 8003), (3, 32000), (5, 1013)])
@pytest.mark.parametrize("k", [1, 2, 10, 12])
def test_topk_rows_equals_topk(rows, length, k):
    torch.manual_seed(length + k)
    x = torch.randn(rows, length).log_softmax(-1)
    x[0, -1] = 5.0  # a winner in the remainder columns (length not a multiple of the blocks)
    x[-1, 0] = 4.0
    values, idx = topk_rows(x, k)
    ref_values, ref_idx = x.topk(k, dim=1)
    assert torch.equal(values, ref_values)
    assert torch.equal(idx, ref_idx)


def test_topk_rows_with_ties_and_masked_rows():
    torch.manual_seed(0)
    x = torch.randn(4, 6000).round(decimals=1)  # many exact ties
    x[1] = float("-inf")
    x[1, 4321] = -0.5  # a row forced to end: one finite entry
    x[2, :3000] = float("-inf")
    values, idx = topk_rows(x, 10)
    assert torch.equal(values, x.topk(10, dim=1).values)
    assert torch.equal(x.gather(1, idx), values)  # the indices point at those values
    assert all(len(set(row)) == 10 for row in idx.tolist())  # no index twice
    assert idx[1, 0] == 4321 and torch.isinf(values[1, 1:]).all()
    short = torch.randn(3, 40)
    assert torch.equal(topk_rows(short, 50)[0], short.topk(40, dim=1).values)  # k > length: all


def test_attend_matches_sdpa_with_key_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(6, 4, 5, 16), torch.randn(6, 4, 11, 16), torch.randn(6, 4, 11, 16)
    mask = torch.rand(6, 1, 1, 11) > 0.3
    mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(_attend(q, k, v, mask), ref, atol=1e-5)
    assert torch.allclose(_attend(q, k, v, None), F.scaled_dot_product_attention(q, k, v), atol=1e-5)


def test_attention_module_same_with_and_without_grad():
    """Inference (no grad) takes `_attend` for few queries and SDPA otherwise; training-mode
    and grad-enabled calls always take SDPA. All agree, causal blocks included."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, dropout=0.0).eval()
    mem = torch.randn(3, 9, 32)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    for n_q in (1, MANUAL_QUERIES, MANUAL_QUERIES + 1):
        x = torch.randn(3, n_q, 32)
        for kv, kwargs in ((mem, {"mask": mask}), (x, {"is_causal": True}), (x, {})):
            with torch.no_grad():
                fast = attn(x, kv, **kwargs)
            assert torch.allclose(fast, attn(x, kv, **kwargs).detach(), atol=1e-5), (n_q, kwargs)
