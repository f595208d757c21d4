"""Typed views of what prepare hands on: the vocabulary record and the manifest of run_dir/data.

`prepare` writes `manifest.json` (counts, filter reasons, checksums: see prepare.py); the trainer,
the gradients study and the subword sampler read it only through `read_manifest`. Checkpoints
and bundles store the vocabulary as `{"src_vocab", "tgt_vocab", "joint"}` (and bundles `pad_id`);
`Vocab.saved` and `Vocab.from_saved` are the one place that knows those keys, so files written by
earlier versions keep loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mtcli.errors import MtcliError

# SentencePiece ids of the special pieces, the same in every model mtcli trains.
SPECIAL = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}


@dataclass(frozen=True)
class Vocab:
    """Vocabulary sizes of both sides, whether they share one SentencePiece model, the pad id."""

    src_size: int
    tgt_size: int
    joint: bool
    pad_id: int

    def saved(self) -> dict:
        """The form stored in checkpoints and bundle metadata."""
        return {"src_vocab": self.src_size, "tgt_vocab": self.tgt_size, "joint": self.joint}

    @classmethod
    def from_saved(cls, saved: dict) -> Vocab:
        """From a checkpoint's `vocab` or a bundle's metadata (pad id: SPECIAL's unless stored)."""
        pad_id = saved.get("pad_id", SPECIAL["pad_id"])
        return cls(int(saved["src_vocab"]), int(saved["tgt_vocab"]), bool(saved["joint"]), int(pad_id))


@dataclass(frozen=True)
class Manifest:
    """What the consumers of prepared data need from its manifest."""

    src_lang: str
    tgt_lang: str
    dtype: str  # numpy dtype of the stored ids
    splits: tuple[str, ...]  # e.g. ("train", "valid", "test")
    vocab: Vocab
    tokenizer_type: str  # unigram or bpe
    spm_models: tuple[str, ...]  # ("spm.model",) when joint, else the source and target models
    ids: dict = field(default_factory=lambda: dict(SPECIAL))  # special ids (an imported model's own)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "manifest.json") -> Manifest:
        """From the JSON object prepare wrote; a missing key is a clear error."""
        try:
            v = raw["vocab"]
            ids = {**SPECIAL, **v.get("special", {})}
            vocab = Vocab(int(v["src_size"]), int(v["tgt_size"]), bool(v["joint"]), int(ids["pad_id"]))
            return cls(raw["src_lang"], raw["tgt_lang"], raw["dtype"], tuple(raw["splits"]), vocab,
                       v["type"], tuple(v["models"]), ids)  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise MtcliError(f"{where}: not a manifest of prepared data (missing {exc}); run `mtcli prepare --force`") from None


def read_manifest(data_dir: Path) -> Manifest:
    """The manifest of a prepared data directory (run `prepare` first)."""
    path = Path(data_dir) / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MtcliError(f"{path}: cannot read the manifest of prepared data ({exc})") from None
    return Manifest.from_dict(raw, str(path))
