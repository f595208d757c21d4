"""The encoder-decoder Transformer shared by train and translate.

`build_model` is the only function that reads the model config; everything below takes plain
arguments. Search uses `encode` once per batch and `decode` one step at a time with a cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mtcli.config import ModelConfig
from mtcli.data.manifest import Vocab
from mtcli.model.dropout import Dropout
from mtcli.model.layers import DecoderLayer, EncoderLayer, KVCache
from mtcli.model.residual import Residual, deepnorm_constants, final_norm

DecoderCache = list[dict]  # per layer: {"self": KVCache, "cross": {"k", "v"}}


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """(P, D) sin on even dims, cos on odd dims (Vaswani et al. 2017, section 3.5)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table


class Embedder(nn.Module):
    """Token embedding scaled by sqrt(D), plus positions, then dropout."""

    def __init__(self, tokens: nn.Embedding, positions: str, max_positions: int, dropout: float):
        super().__init__()
        d_model = tokens.embedding_dim
        self.tokens = tokens
        self.scale = math.sqrt(d_model)
        self.learned = positions == "learned"
        if self.learned:
            self.positions = nn.Embedding(max_positions, d_model)
            nn.init.normal_(self.positions.weight, std=d_model**-0.5)
        else:
            self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, ids: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) -> (B, L, D); `offset` is the position of ids[:, 0] (for cached decoding), or
        `positions` (B,) gives each row's own (one new token per row, continuous batching)."""
        x = self.tokens(ids) * self.scale
        where = slice(offset, offset + ids.size(1)) if positions is None else positions[:, None]
        pos = self.positions.weight[where] if self.learned else self.table[where]
        return self.dropout(x + pos.to(x.dtype))


class Transformer(nn.Module):
    """Encoder-decoder Transformer with pluggable residual/normalization placement."""

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        encoder_layers: int,
        decoder_layers: int,
        dropout: float,
        norm: str,
        norm_type: str,
        attention_dropout: float,
        activation: str,
        eps: float,
        residual: bool,
        positions: str,
        max_positions: int,
        share_embeddings: bool,
        tie_output: bool,
        pad_id: int,
        output_bias: bool = False,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.max_positions = max_positions
        self.norm = norm
        enc_alpha = dec_alpha = 1.0
        if norm == "deepnorm":
            c = deepnorm_constants(encoder_layers, decoder_layers)
            enc_alpha, dec_alpha = c["encoder_alpha"], c["decoder_alpha"]
        shape = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
                     attention_dropout=attention_dropout, activation=activation)  # fmt: skip
        enc_wrap = partial(Residual, d_model, norm, norm_type, dropout, eps, enc_alpha, residual)
        dec_wrap = partial(Residual, d_model, norm, norm_type, dropout, eps, dec_alpha, residual)
        src_tokens = nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
        tgt_tokens = src_tokens if share_embeddings else nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
        self.src_embed = Embedder(src_tokens, positions, max_positions, dropout)
        self.tgt_embed = Embedder(tgt_tokens, positions, max_positions, dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**shape, wrap=enc_wrap) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**shape, wrap=dec_wrap) for _ in range(decoder_layers))
        self.encoder_norm = final_norm(norm, norm_type, d_model, eps)
        self.decoder_norm = final_norm(norm, norm_type, d_model, eps)
        self.output_proj = None if tie_output else nn.Linear(d_model, tgt_vocab, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(tgt_vocab)) if output_bias else None
        self.reset_parameters(encoder_layers, decoder_layers)

    def reset_parameters(self, n_enc: int, n_dec: int) -> None:
        """Xavier init for projections; DeepNorm scales FFN, value and output projections by beta."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
                nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
                nn.init.zeros_(module.weight[module.padding_idx])
        if self.norm == "deepnorm":
            c = deepnorm_constants(n_enc, n_dec)
            self._deepnorm_init(self.encoder, c["encoder_beta"])
            self._deepnorm_init(self.decoder, c["decoder_beta"])

    @staticmethod
    def _deepnorm_init(layers: nn.ModuleList, beta: float) -> None:
        # Wang et al. 2022, Fig. 2: xavier_normal with gain beta on v/out/ffn, gain 1 on q/k.
        for name, p in layers.named_parameters():
            if p.dim() != 2:
                continue
            scaled = any(k in name for k in ("v_proj", "out_proj", "linear1", "linear2"))
            nn.init.xavier_normal_(p, gain=beta if scaled else 1.0)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) token ids -> memory (B, S, D) and its padding mask (B, S)."""
        pad_mask = src.eq(self.pad_id)
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, pad_mask)
        return self.encoder_norm(x), pad_mask

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_pad_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        positions: torch.Tensor | None = None,
        self_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt (B, T) ids -> logits (B, T, V). With a cache, tgt holds only the new positions.

        Continuous batching decodes one token per row at each row's own `positions` (B,), with
        `self_pad_mask` (B, cached + 1) True at the cached positions a row must not see."""
        offset = 0
        if cache is not None:
            offset = cache[0]["self"].size
        x = self.tgt_embed(tgt, offset, positions)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, memory_pad_mask, None if cache is None else cache[i], self_pad_mask)
        return self.project(self.decoder_norm(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V) logits, through the tied target embedding unless untied (plus the
        output bias of imported Marian models)."""
        if self.output_proj is not None:
            logits = self.output_proj(x)
        else:
            logits = F.linear(x, self.tgt_embed.tokens.weight)
        return logits if self.output_bias is None else logits + self.output_bias.to(logits.dtype)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: src (B, S), tgt_in (B, T) -> (B, T, V)."""
        memory, pad_mask = self.encode(src)
        return self.decode(tgt_in, memory, pad_mask)

    def new_cache(self) -> DecoderCache:
        """An empty per-layer decoder cache for incremental decoding."""
        return [{"self": KVCache(), "cross": {}} for _ in self.decoder]

    def cross_cache(self, memory: torch.Tensor) -> list[dict]:
        """Each decoder layer's cross-attention keys and values of `memory`, as a cache holds them."""
        return [dict(zip("kv", layer.cross_attn.project_kv(memory))) for layer in self.decoder]

    @staticmethod
    def reorder_cache(cache: DecoderCache, index: torch.Tensor, cross_index: torch.Tensor | None = None) -> None:
        """Select rows `index` of the self-attention caches (beam reordering, dropping finished rows)
        and rows `cross_index` of the cross-attention caches, which hold one row per sentence that
        its beams share; `cross_index=None` leaves those as they are."""
        for layer in cache:
            layer["self"].select(index)
            if cross_index is not None:
                for key, value in layer["cross"].items():
                    layer["cross"][key] = value.index_select(0, cross_index)

    def fuse_for_inference(self) -> Transformer:
        """Fuse each self-attention's q/k/v projections into one GEMM (inference only; in place)."""
        for layer in [*self.encoder, *self.decoder]:
            if layer.self_attn.qkv_proj is None:
                layer.self_attn.fuse_qkv()
        return self


def transformer_kwargs(model_cfg: ModelConfig, vocab: Vocab) -> dict:
    """The Transformer's arguments for a `ModelConfig` and a vocabulary (the only reader of both)."""
    m = model_cfg
    return dict(
        src_vocab=vocab.src_size,
        tgt_vocab=vocab.tgt_size,
        d_model=m.d_model,
        n_heads=m.n_heads,
        d_ff=m.d_ff,
        encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers,
        dropout=m.dropout,
        norm=m.norm,
        norm_type=m.norm_type,
        attention_dropout=m.attention_dropout,
        activation=m.activation,
        eps=m.norm_eps,
        residual=m.residual,
        positions=m.positions,
        max_positions=m.max_positions,
        share_embeddings=m.tie_embeddings and vocab.joint,
        tie_output=m.tie_embeddings,
        pad_id=vocab.pad_id,
        output_bias=m.output_bias,
    )


def build_model(model_cfg: ModelConfig, vocab: Vocab) -> Transformer:
    """The one place that turns a `ModelConfig` and a vocabulary into a Transformer."""
    return Transformer(**transformer_kwargs(model_cfg, vocab))


LATER_KEYS = {"output_bias": False}  # spec keys added after bundles existed, with the old behaviour


def spec_digest(model_cfg: ModelConfig, vocab: Vocab) -> str:
    """sha256 of everything that decides the function a bundle's weights compute.

    Stored in the weights file, so a `config.yaml` edited to another activation, norm or residual
    (which the tensor shapes cannot reveal) is caught when the bundle loads. Dropout is left out:
    it does not change what a trained model computes.
    """
    spec = {k: v for k, v in transformer_kwargs(model_cfg, vocab).items() if "dropout" not in k}
    # Keys added later count only when set, so bundles written before them keep their digest.
    spec = {k: v for k, v in spec.items() if LATER_KEYS.get(k, object()) != v}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
