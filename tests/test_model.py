"""The Transformer core: reference equivalence, causality, padding, caching, DeepNorm."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from mtcli.config import NORM_PLACEMENTS, ModelConfig
from mtcli.data.manifest import Vocab
from mtcli.model.layers import MANUAL_QUERIES, DecoderLayer, EncoderLayer
from mtcli.model.residual import Residual, deepnorm_constants
from mtcli.model.transformer import Transformer, transformer_kwargs

D, H, FF = 16, 4, 32
PLACEMENTS = list(NORM_PLACEMENTS)
NORM_TYPES = ["layernorm", "rmsnorm"]




def layer_args(norm: str) -> dict:
    """A layer's arguments besides its shape, as the schema's defaults give them (no DeepNorm alpha)."""
    wrap = partial(Residual, D, norm, "layernorm", 0.0, 1e-5, 1.0, True)
    return dict(dropout=0.0, attention_dropout=0.0, activation="relu", wrap=wrap)


def tiny_model(norm="pre", norm_type="layernorm", n_enc=2, n_dec=2, **kw) -> Transformer:
    cfg = ModelConfig(d_model=D, n_heads=H, d_ff=FF, encoder_layers=n_enc, decoder_layers=n_dec, dropout=0.0,
                      norm=norm, norm_type=norm_type)  # fmt: skip
    torch.manual_seed(0)
    return Transformer(**{**transformer_kwargs(cfg, Vocab(23, 23, joint=True, pad_id=0)), **kw}).eval()


def _copy_attn(ours, theirs: nn.MultiheadAttention) -> None:
    q, k, v = theirs.in_proj_weight.chunk(3)
    qb, kb, vb = theirs.in_proj_bias.chunk(3)
    for lin, w, b in ((ours.q_proj, q, qb), (ours.k_proj, k, kb), (ours.v_proj, v, vb),
                      (ours.out_proj, theirs.out_proj.weight, theirs.out_proj.bias)):
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(b)


def _copy_common(ours, theirs, norms) -> None:
    _copy_attn(ours.self_attn, theirs.self_attn)
    ours.ff.linear1.load_state_dict(theirs.linear1.state_dict())
    ours.ff.linear2.load_state_dict(theirs.linear2.state_dict())
    for res, ref in zip(norms, (theirs.norm1, theirs.norm2, getattr(theirs, "norm3", None))):
        res.norm.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_layer_matches_torch(norm):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True,
                                     norm_first=norm == "pre").eval()
    ours = EncoderLayer(D, H, FF, **layer_args(norm)).eval()
    # Perturb norm weights so the test would notice a norm in the wrong slot.
    for p in ref.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    _copy_common(ours, ref, [ours.self_attn_res, ours.ff_res])
    x = torch.randn(3, 7, D)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    with torch.no_grad():
        expected = ref(x, src_key_padding_mask=pad)
        got = ours(x, pad)
    keep = ~pad
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_layer_matches_torch(norm):
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True,
                                     norm_first=norm == "pre").eval()
    ours = DecoderLayer(D, H, FF, **layer_args(norm)).eval()
    for p in ref.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    _copy_common(ours, ref, [ours.self_attn_res, ours.cross_attn_res, ours.ff_res])
    _copy_attn(ours.cross_attn, ref.multihead_attn)
    x, mem = torch.randn(2, 6, D), torch.randn(2, 5, D)
    mem_pad = torch.zeros(2, 5, dtype=torch.bool)
    mem_pad[0, 3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        expected = ref(x, mem, tgt_mask=causal, memory_key_padding_mask=mem_pad, tgt_is_causal=True)
        got = ours(x, mem, mem_pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", PLACEMENTS)
def test_causality(norm):
    model = tiny_model(norm)
    src = torch.randint(3, 23, (2, 6))
    tgt = torch.randint(3, 23, (2, 8))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(3, 23, (2, 3))
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("norm", PLACEMENTS)
def test_padding_invariance(norm):
    model = tiny_model(norm)
    src = torch.randint(3, 23, (1, 5))
    tgt = torch.randint(3, 23, (1, 4))
    padded_src = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    padded_tgt = torch.cat([tgt, torch.zeros(1, 2, dtype=torch.long)], 1)
    with torch.no_grad():
        mem, _ = model.encode(src)
        mem_p, _ = model.encode(padded_src)
        torch.testing.assert_close(mem_p[:, :5], mem, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(padded_src, padded_tgt)[:, :4], model(src, tgt),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", PLACEMENTS)
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_cached_decoding_equals_full(norm, positions):
    model = tiny_model(norm, positions=positions)
    src = torch.randint(3, 23, (3, 6))
    src[2, 4:] = 0
    tgt = torch.randint(3, 23, (3, 7))
    with torch.no_grad():
        mem, pad = model.encode(src)
        full = model.decode(tgt, mem, pad)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, t : t + 1], mem, pad, cache) for t in range(7)]
        # A block of several new tokens after a cached prefix must also be causal.
        cache2 = model.new_cache()
        head = model.decode(tgt[:, :3], mem, pad, cache2)
        tail = model.decode(tgt[:, 3:], mem, pad, cache2)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-5, rtol=1e-5)


def test_reorder_cache_selects_rows():
    model = tiny_model()
    src = torch.randint(3, 23, (2, 5))
    tgt = torch.randint(3, 23, (2, 3))
    with torch.no_grad():
        mem, pad = model.encode(src)
        cache = model.new_cache()
        model.decode(tgt[:, :2], mem, pad, cache)
        Transformer.reorder_cache(cache, torch.tensor([1, 1]), torch.tensor([1, 1]))
        swapped = model.decode(tgt[[1, 1], 2:], mem[[1, 1]], pad[[1, 1]], cache)
        full = model.decode(tgt[[1, 1]], mem[[1, 1]], pad[[1, 1]])
    torch.testing.assert_close(swapped[:, 0], full[:, 2], atol=1e-5, rtol=1e-5)


def test_long_cached_decoding_with_reordering_and_shared_memory():
    """40 cached steps (the self-attention buffer grows past its first capacities), beams reordered
    and rows dropped on the way, memory kept once per sentence for its 3 beams: every step's logits
    equal a full recomputation over the expanded memory."""
    model = tiny_model(max_positions=64)
    src = torch.randint(3, 23, (2, 6))
    src[1, 4:] = 0
    beams, n_steps = 3, 40
    tgt = torch.randint(3, 23, (2 * beams, n_steps))
    with torch.no_grad():
        mem, pad = model.encode(src)  # (2, S, D): one row per sentence
        cache = model.new_cache()
        rows = torch.arange(2 * beams)  # which original target row each cache row holds
        for t in range(n_steps):
            if t == 17:  # beams reordered: row 0 copied, 1 and 2 swapped
                perm = torch.tensor([0, 0, 1, 5, 3, 4])
                model.reorder_cache(cache, perm)
                rows = rows[perm]
            if t == 29:  # sentence 0 finished: keep sentence 1's beams and memory row only
                model.reorder_cache(cache, torch.tensor([3, 4, 5]), torch.tensor([1]))
                mem, pad, rows = mem[1:], pad[1:], rows[3:]
            seq = tgt[rows, : t + 1]
            step = model.decode(seq[:, -1:], mem, pad, cache)[:, -1]
            expanded = mem.repeat_interleave(beams, 0), pad.repeat_interleave(beams, 0)
            full = model.decode(seq, *expanded)[:, -1]
            if t in (0, 16, 17, 28, 29, 39):
                torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    assert cache[0]["self"].len == n_steps and cache[0]["self"].k.size(0) >= n_steps


@pytest.mark.parametrize("src_len", [7, MANUAL_QUERIES + 4])  # encoder on `_attend` / on SDPA
def test_fused_inference_model_matches_training_model(src_len):
    """Fused q/k/v projections change no output: teacher-forced, and step by step with the cache."""
    model = tiny_model("pre")
    src, tgt = torch.randint(3, 23, (3, src_len)), torch.randint(3, 23, (3, 5))
    src[0, -3:] = model.pad_id  # padding: the key mask applies on both attention paths
    with torch.no_grad():
        want = model(src, tgt)
        fused = copy.deepcopy(model).fuse_for_inference()
        assert all(layer.self_attn.qkv_proj is not None for layer in [*fused.encoder, *fused.decoder])
        assert all(layer.cross_attn.qkv_proj is None for layer in fused.decoder)
        got = fused(src, tgt)
        memory, pad = fused.encode(src)
        cache = fused.new_cache()
        steps = [fused.decode(tgt[:, t : t + 1], memory, pad, cache)[:, -1] for t in range(tgt.size(1))]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", PLACEMENTS)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_forward_backward_finite(norm, norm_type):
    model = tiny_model(norm, norm_type).train()
    src, tgt = torch.randint(3, 23, (2, 6)), torch.randint(3, 23, (2, 5))
    logits = model(src, tgt)
    assert logits.shape == (2, 5, 23)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_parameter_names_match_across_placements():
    names = {n: {k for k, _ in tiny_model(n).named_parameters()} for n in ("post", "deepnorm", "pre")}
    assert names["post"] == names["deepnorm"]
    # pre-LN closes each stack with one extra norm; every sublayer weight keeps its name.
    extra = names["pre"] - names["post"]
    assert extra and all(k.startswith(("encoder_norm.", "decoder_norm.")) for k in extra)
    assert names["post"] <= names["pre"]


def test_rmsnorm_is_used_when_asked():
    from mtcli.model.residual import RMSNorm

    model = tiny_model("pre", "rmsnorm")
    norms = [m for m in model.modules() if isinstance(m, (RMSNorm, nn.LayerNorm))]
    assert norms and all(isinstance(m, RMSNorm) for m in norms)


def test_deepnorm_constants_and_init():
    c = deepnorm_constants(6, 6)
    assert c["encoder_alpha"] == pytest.approx(0.81 * (6**4 * 6) ** (1 / 16))
    assert c["decoder_beta"] == pytest.approx((12 * 6) ** (-1 / 4))
    model = tiny_model("deepnorm", n_enc=6, n_dec=6)
    plain = tiny_model("post", n_enc=6, n_dec=6)
    assert model.encoder[0].ff_res.alpha == pytest.approx(c["encoder_alpha"])
    assert model.decoder[0].self_attn_res.alpha == pytest.approx(c["decoder_alpha"])
    assert plain.encoder[0].ff_res.alpha == 1.0

    def std(m, name):
        return torch.stack([dict(layer.named_parameters())[name].std() for layer in m]).mean().item()

    # Scaled projections shrink by ~beta relative to q/k (both xavier-normal otherwise).
    ratio_enc = std(model.encoder, "ff.linear1.weight") / std(plain.encoder, "ff.linear1.weight")
    assert ratio_enc == pytest.approx(c["encoder_beta"], rel=0.15)
    v = std(model.decoder, "self_attn.v_proj.weight")
    q = std(model.decoder, "self_attn.q_proj.weight")
    assert v / q == pytest.approx(c["decoder_beta"], rel=0.15)


def test_no_residual_ablation_changes_output():
    with_res, without = tiny_model("pre"), tiny_model("pre", residual=False)
    src, tgt = torch.randint(3, 23, (1, 5)), torch.randint(3, 23, (1, 4))
    with torch.no_grad():
        assert not torch.allclose(with_res(src, tgt), without(src, tgt))


def test_rmsnorm_matches_its_definition_and_gradients():
    from mtcli.model.residual import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5).double()
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # Half precision goes through float32 and comes back in its own dtype.
    half = RMSNorm(16, eps=1e-5)(torch.randn(2, 16).bfloat16())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()
