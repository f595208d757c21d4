"""A tiny Transformer and search settings for the search, quantization and fast-path tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mtcli.config import DecodeConfig, ModelConfig
from mtcli.data.manifest import SPECIAL, Vocab
from mtcli.inference.search import SearchParams
from mtcli.model.transformer import Transformer, transformer_kwargs

IDS = SimpleNamespace(**SPECIAL)  # the special ids, as a Tokenizer carries them


def tiny_transformer(vocab: int, d_model: int = 64, d_ff: int = 128, seed: int = 0, n_layers: int = 2,
                     n_heads: int = 4, max_positions: int = 64, **kw) -> Transformer:  # fmt: skip
    """A seeded pre-LN model in eval mode, the schema's defaults elsewhere; keyword arguments
    override Transformer arguments (e.g. norm, dropout, tie_output, src_vocab)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=d_model, n_heads=n_heads, d_ff=d_ff, encoder_layers=n_layers,
                      decoder_layers=n_layers, dropout=0.0, norm="pre", max_positions=max_positions)  # fmt: skip
    args = {**transformer_kwargs(cfg, Vocab(vocab, vocab, joint=True, pad_id=SPECIAL["pad_id"])), **kw}
    return Transformer(**args).eval()


def search_params(**decode) -> SearchParams:
    """SearchParams from decode settings (the schema's defaults for the rest) and the special ids."""
    return SearchParams.from_decode(DecodeConfig(**decode), IDS)
