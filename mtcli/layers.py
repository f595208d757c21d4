"""Transformer building blocks: attention with an explicit cache, feed-forward, encoder/decoder layers.

Shapes: B batch, S source length, T target length, D d_model, H heads.
Mask convention (the only one in mtcli): `pad_mask` is a bool tensor (B, L) that is True at
padding positions. It is turned into SDPA's "True = may attend" form in one place, `key_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtcli.dropout import Dropout
from mtcli.residual import Residual

Cache = dict[str, torch.Tensor]


def key_mask(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) True-at-padding -> (B, 1, 1, S) True-may-attend, broadcast over heads and queries."""
    return None if pad_mask is None else ~pad_mask[:, None, None, :]


def causal_mask(n_new: int, n_past: int, device: torch.device) -> torch.Tensor:
    """(T, past+T) True-may-attend: new token i sees every cached token and new tokens <= i."""
    full = torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=device)
    return full.tril(diagonal=n_past)


class MultiHeadAttention(nn.Module):
    """Multi-head attention on `scaled_dot_product_attention`, with optional key/value cache."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, L, D) -> (B, H, L, D/H)
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _keys_values(self, kv: torch.Tensor, cache: Cache | None, static: bool):
        if cache is not None and static and "k" in cache:
            return cache["k"], cache["v"]  # cross-attention: memory projected once per sentence
        k, v = self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        if cache is not None:
            if not static and "k" in cache:  # self-attention: append this step's keys/values
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        return k, v

    def forward(
        self,
        query: torch.Tensor,
        kv: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Cache | None = None,
        static_kv: bool = False,
    ) -> torch.Tensor:
        """query (B, Lq, D), kv (B, Lk, D); mask broadcastable to (B, H, Lq, Lk), True = attend."""
        q = self._split(self.q_proj(query))
        k, v = self._keys_values(kv, cache, static_kv)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        b, h, n, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * dh))


class FeedForward(nn.Module):
    """Position-wise feed-forward: linear -> activation -> dropout -> linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)
        self.activation = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each wrapped by a `Residual`."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        norm: str,
        norm_type: str = "layernorm",
        attention_dropout: float = 0.0,
        activation: str = "relu",
        eps: float = 1e-5,
        alpha: float = 1.0,
        residual: bool = True,
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.ff = FeedForward(d_model, d_ff, dropout, activation)
        self.self_attn_res = Residual(d_model, norm, norm_type, dropout, eps, alpha, residual)
        self.ff_res = Residual(d_model, norm, norm_type, dropout, eps, alpha, residual)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, S, D), pad_mask (B, S) True at padding -> (B, S, D)."""
        mask = key_mask(pad_mask)
        x = self.self_attn_res(x, lambda h: self.self_attn(h, h, mask))
        return self.ff_res(x, self.ff)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention and feed-forward, each wrapped by a `Residual`."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        norm: str,
        norm_type: str = "layernorm",
        attention_dropout: float = 0.0,
        activation: str = "relu",
        eps: float = 1e-5,
        alpha: float = 1.0,
        residual: bool = True,
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.ff = FeedForward(d_model, d_ff, dropout, activation)
        self.self_attn_res = Residual(d_model, norm, norm_type, dropout, eps, alpha, residual)
        self.cross_attn_res = Residual(d_model, norm, norm_type, dropout, eps, alpha, residual)
        self.ff_res = Residual(d_model, norm, norm_type, dropout, eps, alpha, residual)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_pad_mask: torch.Tensor | None = None,
        cache: dict[str, Cache] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) new target positions, memory (B, S, D) -> (B, T, D).

        With `cache` ({"self": {}, "cross": {}} per layer), x holds only the positions not yet
        cached; earlier keys/values come from the cache and this call appends its own.
        """
        n_new = x.size(1)
        self_cache = cross_cache = None
        n_past = 0
        if cache is not None:
            self_cache, cross_cache = cache["self"], cache["cross"]
            n_past = self_cache["k"].size(2) if "k" in self_cache else 0
        # One new token may attend to every cached one: no mask. A fresh block is causal.
        causal = n_new > 1 and n_past == 0
        self_mask = causal_mask(n_new, n_past, x.device) if n_new > 1 and n_past else None
        x = self.self_attn_res(
            x, lambda h: self.self_attn(h, h, self_mask, is_causal=causal, cache=self_cache)
        )
        mem_mask = key_mask(memory_pad_mask)
        x = self.cross_attn_res(
            x, lambda h: self.cross_attn(h, memory, mem_mask, cache=cross_cache, static_kv=True)
        )
        return self.ff_res(x, self.ff)
