"""A tiny Transformer for the search, quantization and fast-path tests."""

from __future__ import annotations

import torch

from mtcli.model.transformer import Transformer


def tiny_transformer(vocab: int, d_model: int = 64, d_ff: int = 128, seed: int = 0, **kw) -> Transformer:
    """A seeded 2+2-layer pre-LN model in eval mode; keyword arguments override the defaults."""
    torch.manual_seed(seed)
    args = dict(src_vocab=vocab, tgt_vocab=vocab, d_model=d_model, n_heads=4, d_ff=d_ff, encoder_layers=2,
                decoder_layers=2, dropout=0.0, norm="pre", share_embeddings=True, max_positions=64)  # fmt: skip
    args.update(kw)
    return Transformer(**args).eval()
