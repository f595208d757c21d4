"""Packed float32 linears for CPU search: same translations as plain nn.Linear, clean fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from model_helpers import search_params, tiny_transformer
from torch import nn

import mtcli.inference.fastpaths as fastlinear
from mtcli.inference.fastpaths import PackedLinear, pack_linears, packed_count
from mtcli.inference.search import _log_softmax, beam_search

PAD, BOS, EOS, V = 0, 2, 3, 96
N_LINEARS = 4 * 6 + 2 * 4 + 1  # 4 per attention (2 enc + 2x2 dec), 2 per FFN x 4 layers, output

needs_onednn = pytest.mark.skipif(not fastlinear.available(), reason="torch without oneDNN packed linears")


@pytest.fixture(autouse=True)
def _fast_path_on(monkeypatch):
    """These tests are of the packing itself: on even when the suite runs with MTCLI_FAST_LINEAR=0
    (a test that checks the switch sets it again)."""
    monkeypatch.setenv(fastlinear.ENV, "1")


def model(seed=0, **kw):
    return tiny_transformer(V, d_model=64, d_ff=128, seed=seed, **kw)


def random_src(n=12, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (n, length), generator=g)
    src[:, -1] = EOS
    src[2, 5:] = PAD  # padded rows: the encoder's rows differ in length
    src[2, 4] = EOS
    return src


def params(beam, **kw):
    return search_params(beam_size=beam, nbest=beam, max_len_a=0.0, max_len_b=12, min_len=0, **kw)


@needs_onednn
@pytest.mark.parametrize("tied", [True, False])
def test_every_linear_packed_and_original_untouched(tied):
    m = model(tie_output=tied, share_embeddings=tied)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fast = pack_linears(m)
    assert fast is not m and packed_count(fast) == N_LINEARS
    assert not any(type(mod) is nn.Linear for mod in fast.modules())
    assert packed_count(m) == 0 and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    src = random_src()
    tgt = torch.cat([torch.full((len(src), 1), BOS), src[:, :-1]], 1)
    with torch.no_grad():
        torch.testing.assert_close(fast(src, tgt), m(src, tgt), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_search_same_tokens_and_scores(beam, seed):
    m = model(seed)
    fast = pack_linears(m)
    src = random_src(seed=seed + 1)
    ref, got = beam_search(m, src, params(beam)), beam_search(fast, src, params(beam))
    assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in ref]
    for a, b in zip(got, ref):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5, abs=1e-5)
        assert [h.logprob for h in a] == pytest.approx([h.logprob for h in b], rel=1e-5, abs=1e-5)


@needs_onednn
def test_inplace_and_deepcopy():
    m = model()
    src = random_src()
    ref = [h[0].tokens for h in beam_search(m, src, params(3))]
    packed = pack_linears(copy.deepcopy(m), inplace=True)
    again = copy.deepcopy(packed)  # repacked from the dense weights
    assert packed_count(again) == N_LINEARS
    assert [h[0].tokens for h in beam_search(again, src, params(3))] == ref


@pytest.mark.parametrize("why", ["env", "no_ops", "float64", "meta", "pack_fails"])
def test_fallback_returns_the_model_unchanged(why, monkeypatch):
    m = model()
    if why == "env":
        monkeypatch.setenv(fastlinear.ENV, "0")
    elif why == "no_ops":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    elif why == "float64":
        m = m.double()
    elif why == "meta":  # stands in for a GPU model: anything not on the CPU is left alone
        m = m.to("meta")
    else:

        def refuse(*args, **kw):
            raise RuntimeError("oneDNN refused")

        monkeypatch.setattr(PackedLinear, "__init__", refuse)
    assert pack_linears(m) is m and pack_linears(m, inplace=True) is m and packed_count(m) == 0
    if why in ("env", "no_ops", "pack_fails"):
        assert beam_search(m, random_src(), params(2))  # still translates


def test_log_softmax_in_place_is_bitwise_equal():
    x = torch.randn(20, 1, V) * 4
    ref = torch.log_softmax(x[:, -1], dim=-1)
    logits = x[:, -1].clone()
    out = _log_softmax(logits)
    assert out.data_ptr() == logits.data_ptr() and torch.equal(out, ref)
    strided = torch.randn(V, 20).t()  # not contiguous: a new tensor, the input left alone
    before = strided.clone()
    assert torch.equal(_log_softmax(strided), torch.log_softmax(before, dim=-1))
    assert torch.equal(strided, before)


@pytest.mark.parametrize("beam", [1, 5])
def test_beam_wider_than_vocabulary(beam):
    m = model(src_vocab=6, tgt_vocab=6)  # 2 real tokens besides PAD, UNK, BOS, EOS
    src = torch.tensor([[4, 5, 4, EOS], [5, EOS, PAD, PAD]])
    hyps = beam_search(m, src, params(beam))
    assert [len(h) for h in hyps] == [beam, beam]
    for hs in hyps:
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)


needs_bf16 = pytest.mark.skipif(not fastlinear.bf16_supported(), reason="no AVX512-BF16/AMX for oneDNN here")


@needs_onednn
def test_relu_fused_into_the_first_ffn_linear():
    m = model()
    fast = pack_linears(m)
    ffs = [mod for mod in fast.modules() if type(mod).__name__ == "FeedForward"]
    assert len(ffs) == 4
    for ff in ffs:
        assert ff.linear1.relu and ff.linear1.keep_dtype and isinstance(ff.activation, nn.Identity)
        assert not ff.linear2.relu
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        ref = m.decoder[0].ff(x)
        torch.testing.assert_close(fast.decoder[0].ff(x), ref, rtol=1e-5, atol=1e-5)
    gelu = pack_linears(model(activation="gelu"))  # no fused post-op for GELU: left as it was
    assert not any(getattr(mod, "relu", False) for mod in gelu.modules())
    assert all(not isinstance(mod.activation, nn.Identity) for mod in gelu.modules() if hasattr(mod, "linear1"))


@needs_bf16
@pytest.mark.parametrize("tied", [True, False])
def test_bf16_linears_close_to_float32(tied):
    m = model(tie_output=tied, share_embeddings=tied)
    fast = pack_linears(m, bf16=True)
    packed = [mod for mod in fast.modules() if isinstance(mod, PackedLinear)]
    assert len(packed) == N_LINEARS and all(p.dtype == torch.bfloat16 for p in packed)
    src = random_src()
    tgt = torch.cat([torch.full((len(src), 1), BOS), src[:, :-1]], 1)
    with torch.no_grad():
        ref, got = m(src, tgt), fast(src, tgt)
    assert got.dtype == torch.float32
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.02, rel  # rounded (not bit-equal), but close
    assert got.argmax(-1).eq(ref.argmax(-1)).float().mean() > 0.9
    again = copy.deepcopy(fast)  # repacked from the dense bfloat16 weights
    assert all(p.dtype == torch.bfloat16 for p in again.modules() if isinstance(p, PackedLinear))
    with torch.no_grad():
        assert torch.equal(again(src, tgt), got)


def test_bf16_without_hardware_support_is_left_alone(monkeypatch):
    monkeypatch.setattr(fastlinear, "bf16_supported", lambda: False)
    m = model()
    assert pack_linears(m, bf16=True) is m and packed_count(m) == 0


def test_bucket_rows_pads_at_most_an_eighth_and_bounds_the_shapes():
    sizes = [fastlinear.bucket_rows(m) for m in range(1, 8193)]
    assert all(m <= b <= max(16, m * 1.125) for m, b in zip(range(1, 8193), sizes))
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))  # monotone, and a bucket is its own bucket
    assert all(fastlinear.bucket_rows(b) == b for b in sizes)
    assert len(set(sizes)) <= 16 + 8 * 9  # 8 per doubling from 16 to 8,192


@needs_onednn
@pytest.mark.parametrize("buckets", ["1", "0"])
@pytest.mark.parametrize("shape", [(1, 64), (17, 64), (3, 61, 64), (1000, 64)])
def test_padded_rows_change_nothing(shape, buckets, monkeypatch):
    monkeypatch.setenv(fastlinear.BUCKETS_ENV, buckets)
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(40, 64, generator=g), torch.randn(40, generator=g), torch.randn(shape, generator=g)
    lin = PackedLinear(w, b)
    assert lin.buckets is (buckets == "1")
    y = lin(x)
    assert y.shape == (*shape[:-1], 40)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_ever_new_row_counts_stop_growing_the_heap():
    """oneDNN and ideep cache a primitive with its buffers per input shape. Without buckets every
    new row count (a server's batches) added one: 1 to 600 rows at 128x128 grew the heap in use by
    345 MB, against 33 MB with them (docs/BENCHMARKS.md)."""
    from mtcli.serve.heap import heap_bytes

    if heap_bytes() is None:
        pytest.skip("not glibc: no heap statistics")
    lin = PackedLinear(torch.randn(136, 120), torch.randn(136))  # a weight shape no other test uses
    before = heap_bytes()["in_use"]
    with torch.no_grad():
        for m in range(1, 601):
            lin(torch.randn(m, 120))
    grown = heap_bytes()["in_use"] - before
    assert grown < 100e6, f"heap grew {grown / 1e6:.1f} MB over 600 row counts"
