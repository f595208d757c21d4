"""int8 dynamic quantization for CPU inference: close logits, mostly the same greedy output."""

from __future__ import annotations

import pytest
import torch
from model_helpers import search_params, tiny_transformer
from torch import nn

from mtcli.inference.fastpaths import quantize_for_inference
from mtcli.inference.search import beam_search

PAD, BOS, EOS, V = 0, 2, 3, 64


def model(seed=0, **kw):
    return tiny_transformer(V, d_model=64, d_ff=128, seed=seed, **kw)


def random_src(n=32, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (n, length), generator=g)
    src[:, -1] = EOS
    return src


def dynamic_linears(m: nn.Module) -> int:
    return sum(1 for mod in m.modules() if type(mod).__name__ == "Linear" and "quantized" in type(mod).__module__)


@pytest.mark.parametrize("tied", [True, False])
def test_every_projection_quantized_and_original_untouched(tied):
    m = model(tie_output=tied, share_embeddings=tied)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    q = quantize_for_inference(m)
    # 4 attention projections x (2 enc + 2x2 dec attentions) + 2 FFN x 4 layers + output projection
    assert dynamic_linears(q) == 4 * 6 + 2 * 4 + 1
    assert m.output_proj is None if tied else isinstance(m.output_proj, nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert isinstance(q.tgt_embed.tokens, nn.Embedding)  # the lookup stays float32


def test_logits_close():
    m = model()
    q = quantize_for_inference(m)
    src = random_src()
    tgt = torch.cat([torch.full((len(src), 1), BOS), src[:, :-1]], 1)
    with torch.no_grad():
        ref, got = m(src, tgt), q(src, tgt)
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)
    assert got.argmax(-1).eq(ref.argmax(-1)).float().mean() > 0.9


def test_greedy_and_beam_mostly_unchanged():
    m = model()
    q = quantize_for_inference(m)
    src = random_src()
    for beam in (1, 4):
        p = search_params(beam_size=beam, max_len_a=0.0, max_len_b=10, min_len=0)
        ref = [h[0].tokens for h in beam_search(m, src, p)]
        got = [h[0].tokens for h in beam_search(q, src, p)]
        same = sum(a == b for a, b in zip(ref, got)) / len(ref)
        assert same >= 0.75, (beam, same)
