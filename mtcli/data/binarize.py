"""The encode pass: cleaned work files → SentencePiece ids → binarized splits (+ valid/test text).

The work file is read in chunks and each chunk is encoded with one batched, multi-threaded
SentencePiece call, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mtcli.config import FilterConfig
from mtcli.data.clean import DROPPED, SPLIT_CODES, LengthStats, token_reasons
from mtcli.data.splits import SplitWriter
from mtcli.data.spm import encoder
from mtcli.data.summary import rss_mb

CHUNK = 20_000  # pairs per SentencePiece call


class Binarizer:
    """Writes `{split}.src/.tgt` (.bin/.idx) and, for valid/test, `{split}.src.txt/.tgt.txt`."""

    def __init__(self, out: Path, splits: list[str], dtype: np.dtype, filters: FilterConfig):
        self.out, self.filter_config = out, filters
        self.writers = {
            s: (SplitWriter(out / f"{s}.src", dtype), SplitWriter(out / f"{s}.tgt", dtype))
            for s in splits
        }
        self.texts = {
            s: (
                open(out / f"{s}.src.txt", "w", encoding="utf-8"),
                open(out / f"{s}.tgt.txt", "w", encoding="utf-8"),
            )
            for s in splits
            if s != "train"
        }
        self.lengths = {s: (LengthStats(), LengthStats()) for s in splits}
        self.filters = {s: Counter() for s in splits}
        self.augmented = 0  # train pairs added by data augmentation (before the token filters)
        self.start_rss_mb = self.peak_rss_mb = rss_mb()

    def add(self, split: str, src: list[str], tgt: list[str], src_ids: list, tgt_ids: list) -> None:
        """Append encoded pairs to a split; train pairs pass the token-length and ratio filters."""
        n_src = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
        n_tgt = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
        if split == "train":
            reasons = token_reasons(n_src, n_tgt, self.filter_config)
            keep = [i for i, reason in enumerate(reasons) if reason is None]
            self.filters[split].update(reason for reason in reasons if reason)
            if len(keep) < len(reasons):
                src_ids, tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
                n_src, n_tgt = n_src[keep], n_tgt[keep]
        else:
            src_file, tgt_file = self.texts[split]
            src_file.write("".join(line + "\n" for line in src))
            tgt_file.write("".join(line + "\n" for line in tgt))
        src_writer, tgt_writer = self.writers[split]
        src_writer.add_batch(src_ids)
        tgt_writer.add_batch(tgt_ids)
        self.lengths[split][0].add(n_src)
        self.lengths[split][1].add(n_tgt)
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())

    def close(self) -> dict:
        """Finish every file; returns per-split pairs, token totals and length statistics."""
        for src_file, tgt_file in self.texts.values():
            src_file.close()
            tgt_file.close()
        results = {}
        for split, (src_writer, tgt_writer) in self.writers.items():
            pairs = src_writer.close()
            tgt_writer.close()
            src_len, tgt_len = self.lengths[split]
            results[split] = {
                "pairs": pairs,
                "src_tokens": src_writer.tokens,
                "tgt_tokens": tgt_writer.tokens,
                "src_len": src_len.summary(),
                "tgt_len": tgt_len.summary(),
            }
        return results


def _chunks(f, size: int):
    while lines := [line for _, line in zip(range(size), f)]:
        yield lines


Augment = Callable[[list[str], list[str]], tuple[list[str], list[str]]]


def encode_file(
    path: Path, codes, models: dict, out: Binarizer, progress, augment: Augment | None = None
) -> None:
    """Encode a work file (`src<TAB>tgt` lines); `codes` is a per-line split code array or one code.

    `augment` maps a chunk of train pairs to extra train pairs (see `data.strip_punct`)."""
    encode_src, encode_tgt = encoder(models["src"]), encoder(models["tgt"])
    names = {code: split for split, code in SPLIT_CODES.items()}
    per_line = isinstance(codes, np.ndarray)
    total = int((codes != DROPPED).sum()) if per_line else None
    label = "train" if per_line else names[codes]
    task = progress.add_task(f"encoding {label}", total=total)
    start = 0
    with open(path, encoding="utf-8") as f:
        for lines in _chunks(f, CHUNK):
            chunk_codes = (
                codes[start : start + len(lines)] if per_line else np.full(len(lines), codes)
            )
            start += len(lines)
            for code in np.unique(chunk_codes).tolist():
                if code == DROPPED:
                    continue
                rows = [lines[i] for i in np.flatnonzero(chunk_codes == code)]
                src, tgt = zip(*(line.rstrip("\n").split("\t") for line in rows))
                src, tgt = list(src), list(tgt)
                if augment is not None and names[code] == "train":
                    extra_src, extra_tgt = augment(src, tgt)
                    out.augmented += len(extra_src)
                    src, tgt = src + extra_src, tgt + extra_tgt
                out.add(names[code], src, tgt, encode_src(src), encode_tgt(tgt))
                progress.advance(task, len(rows))
    if not per_line:
        progress.update(task, total=start)
