"""Random-initialised mtcli bundles with real SentencePiece models, for the export and import tests.

`spm_dir` trains SentencePiece on a slice of Multi30k (joint, or one model per side); `random_bundle`
builds a model of any shape with `build_model`, scales its weights up so that greedy outputs vary
from sentence to sentence (a fresh init tends to repeat one token), and writes a real bundle with
`export_bundle`, exactly as training does.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import torch
from run_helpers import DATA

from mtcli.config import Config
from mtcli.data.manifest import SPECIAL, Vocab
from mtcli.data.spm import train_spm
from mtcli.inference.bundle import export_bundle
from mtcli.model.transformer import build_model, spec_digest

SRC, TGT = "en", "de"
EMBED = 3.0  # larger token embeddings: sharper, more input-dependent logits


def lines(lang: str, split: str = "train", n: int = 2000) -> list[str]:
    """The first n lines of a Multi30k split ("train", "val" or "test_2016_flickr")."""
    with gzip.open(DATA / "multi30k" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def spm_dir(root: Path, joint: bool, vocab_size: int = 500) -> Path:
    """A folder with spm.model, or spm.src.model and spm.tgt.model, trained on Multi30k en/de."""
    from mtcli.config import TokenizerConfig

    root.mkdir(parents=True, exist_ok=True)
    tok = TokenizerConfig(type="unigram", vocab_size=vocab_size, joint=joint)
    if joint:
        train_spm(lines(SRC) + lines(TGT), root / "spm", tok, seed=1, max_chars=1000)
    else:
        train_spm(lines(SRC), root / "spm.src", tok, seed=1, max_chars=1000)
        train_spm(lines(TGT), root / "spm.tgt", tok, seed=1, max_chars=1000)
    return root


def random_bundle(out: Path, spm: Path, seed: int = 0, scale: float = 10.0, decode: dict | None = None,
                  **model) -> Path:  # fmt: skip
    """A bundle of a random model: `model` keys override a tiny ModelConfig (d_model 32, 2 heads)."""
    from mtcli.data.spm import Tokenizer

    tok = Tokenizer(spm)
    joint = (spm / "spm.model").exists()
    model = {"d_model": 32, "n_heads": 2, "d_ff": 64, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0,
             "max_positions": 128, **model}  # fmt: skip
    data = {"src_lang": SRC, "tgt_lang": TGT, "train": {"type": "tsv", "path": "unused.tsv"},
            "filters": {"max_tokens": model["max_positions"] - 1}}
    cfg = Config.model_validate({"name": "random", "data": data, "tokenizer": {"joint": joint},
                                 "model": model, "decode": {"max_len_b": 30, **(decode or {})}})  # fmt: skip
    vocab = Vocab(tok.src_vocab_size, tok.tgt_vocab_size, joint, SPECIAL["pad_id"])
    torch.manual_seed(seed)
    net = build_model(cfg.model, vocab)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "tokens" in name:
                p.mul_(EMBED)
            elif name == "output_proj.weight":  # an untied output projection: like a tied one
                p.normal_(0.0, EMBED * p.size(1) ** -0.5)
            elif p.dim() == 2:
                # sharp attention would amplify float32 rounding: queries and keys stay near their init
                qk = "q_proj" in name or "k_proj" in name
                p.mul_(1.5 if qk else scale ** 0.5)
            elif name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))  # non-trivial norm gains
            elif "bias" in name:  # small biases: a large constant direction would pick one token everywhere
                p.add_(0.02 * torch.randn_like(p))
    meta = {**vocab.saved(), **SPECIAL, "mtcli": "test", "src_lang": SRC, "tgt_lang": TGT}
    export_bundle(net, cfg.model_dump(mode="json"), spm, out, meta, spec_digest(cfg.model, vocab))
    return out


def assert_varied(outputs: list[list[int]]) -> None:
    """Outputs that differ from sentence to sentence, not one token everywhere: else identity proves little.

    (Random post-LN models with tied embeddings tend to repeat a token; the log-probability check
    over the whole vocabulary at every position is the strict one.)"""
    counts = Counter(map(tuple, outputs))
    assert len(counts) >= max(10, len(outputs) // 20), f"only {len(counts)} distinct outputs"
    assert counts.most_common(1)[0][1] < 0.5 * len(outputs), f"one output dominates: {counts.most_common(1)}"
