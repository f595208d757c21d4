"""mtcli's parameter names and channel order against Hugging Face Marian / Pegasus: the one map that
`mtcli export --to huggingface` and `mtcli import huggingface` both read.

Marian (post-LN) and Pegasus (pre-LN, with a final norm on each stack) lay their sinusoidal positions
out as sin on the first half of the channels and cos on the second; mtcli interleaves them (sin on
even channels, cos on odd). Permuting the residual stream's channels by `PERM` turns one into the
other exactly: every LayerNorm ignores channel order, attention and feed-forward inner dimensions are
untouched, and a tied output projection sees the same permutation on both sides of its dot product.
So each tensor is permuted along its residual-stream dimensions (`dims`) and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    """One tensor: its mtcli name, its Hugging Face name, the dimensions that index d_model channels."""

    mtcli: str
    hf: str
    dims: tuple[int, ...]


def perm(d_model: int) -> torch.Tensor:
    """Channel j of the Hugging Face stream is channel PERM[j] of mtcli's: [0, 2, 4, ..., 1, 3, 5, ...]."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def to_hf(t: torch.Tensor, dims: tuple[int, ...], p: torch.Tensor) -> torch.Tensor:
    """An mtcli tensor in Hugging Face channel order."""
    for d in dims:
        t = t.index_select(d, p)
    return t


def from_hf(t: torch.Tensor, dims: tuple[int, ...], p: torch.Tensor) -> torch.Tensor:
    """A Hugging Face tensor in mtcli channel order."""
    inverse = torch.argsort(p)
    for d in dims:
        t = t.index_select(d, inverse)
    return t


# Per sublayer: (mtcli module, Hugging Face module, dims of weight, dims of bias).
_ATTN = [("q_proj", (1,), ()), ("k_proj", (1,), ()), ("v_proj", (1,), ()), ("out_proj", (0,), (0,))]
_FF = [("ff.linear1", "fc1", (1,), ()), ("ff.linear2", "fc2", (0,), (0,))]


def _layer(side: str, i: int, decoder: bool) -> list[Entry]:
    m, h = f"{side}.{i}", f"model.{side}.layers.{i}"
    subs = [("self_attn", "self_attn", "self_attn_res", "self_attn_layer_norm")]
    if decoder:
        subs.append(("cross_attn", "encoder_attn", "cross_attn_res", "encoder_attn_layer_norm"))
    out = []
    for m_attn, h_attn, m_res, h_norm in subs:
        for proj, w_dims, b_dims in _ATTN:
            out += [Entry(f"{m}.{m_attn}.{proj}.weight", f"{h}.{h_attn}.{proj}.weight", w_dims),
                    Entry(f"{m}.{m_attn}.{proj}.bias", f"{h}.{h_attn}.{proj}.bias", b_dims)]  # fmt: skip
        out += _norm(f"{m}.{m_res}.norm", f"{h}.{h_norm}")
    for m_ff, h_ff, w_dims, b_dims in _FF:
        out += [Entry(f"{m}.{m_ff}.weight", f"{h}.{h_ff}.weight", w_dims),
                Entry(f"{m}.{m_ff}.bias", f"{h}.{h_ff}.bias", b_dims)]  # fmt: skip
    return out + _norm(f"{m}.ff_res.norm", f"{h}.final_layer_norm")


def _norm(m: str, h: str) -> list[Entry]:
    return [Entry(f"{m}.weight", f"{h}.weight", (0,)), Entry(f"{m}.bias", f"{h}.bias", (0,))]


def entries(n_enc: int, n_dec: int, pre: bool, shared: bool, tied_output: bool, output_bias: bool) -> list[Entry]:
    """Every mtcli tensor of such a model with its Hugging Face name (Marian's, or Pegasus's with `pre`).

    With `shared` embeddings the one matrix is written under each Hugging Face name that holds it.
    """
    out = [Entry("src_embed.tokens.weight", "model.encoder.embed_tokens.weight", (1,)),
           Entry("tgt_embed.tokens.weight", "model.decoder.embed_tokens.weight", (1,))]  # fmt: skip
    if shared:
        out.append(Entry("src_embed.tokens.weight", "model.shared.weight", (1,)))
    for i in range(n_enc):
        out += _layer("encoder", i, decoder=False)
    for i in range(n_dec):
        out += _layer("decoder", i, decoder=True)
    if pre:
        out += _norm("encoder_norm", "model.encoder.layer_norm") + _norm("decoder_norm", "model.decoder.layer_norm")
    out.append(Entry("tgt_embed.tokens.weight" if tied_output else "output_proj.weight", "lm_head.weight", (1,)))
    if output_bias:
        out.append(Entry("output_bias", "final_logits_bias", ()))
    return out
