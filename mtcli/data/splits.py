"""Binarized splits: token ids in one flat memory-mapped array plus an offsets array.

Layout in `run_dir/data/` for split `train` and side `src` (likewise `tgt`):

    train.src.bin   token ids, concatenated, dtype from the manifest (uint16 when the vocabulary fits)
    train.src.idx   int64 offsets, n+1 of them: sentence i is bin[idx[i]:idx[i+1]]

Ids carry no BOS/EOS: training and search add them. Files are written to `*.tmp` and renamed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


class SplitWriter:
    """Streams sentences' ids to `prefix.bin` / `prefix.idx` without holding them in memory."""

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._bin = open(f"{prefix}.bin.tmp", "wb")
        # Offsets are streamed too, so memory stays flat however many sentences are written.
        self._idx = open(f"{prefix}.idx.tmp", "wb")
        self._idx.write(np.zeros(1, dtype=np.int64).tobytes())
        self.count = 0
        self.tokens = 0

    def add(self, ids: Iterable[int]) -> None:
        """Append one sentence."""
        self.add_batch([np.asarray(ids, dtype=self.dtype)])

    def add_batch(self, batch: Sequence[Sequence[int]]) -> None:
        """Append many sentences at once (much faster than `add` in a loop)."""
        lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
        n_tokens = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(batch), dtype=self.dtype, count=n_tokens)
        self._bin.write(flat.tobytes())
        self._idx.write((self.tokens + np.cumsum(lengths)).tobytes())
        self.tokens += n_tokens
        self.count += len(batch)

    def close(self) -> int:
        """Flush and rename both files into place; returns the sentence count."""
        self._bin.close()
        self._idx.close()
        for ext in ("bin", "idx"):
            os.replace(f"{self.prefix}.{ext}.tmp", f"{self.prefix}.{ext}")
        return self.count


class Split:
    """A memory-mapped binarized split side: `split[i]` is sentence i's ids (np.ndarray)."""

    def __init__(self, prefix: Path, dtype: np.dtype | str):
        self.offsets = np.fromfile(f"{prefix}.idx", dtype=np.int64)
        size = os.path.getsize(f"{prefix}.bin")
        self.ids = (
            np.memmap(f"{prefix}.bin", dtype=np.dtype(dtype), mode="r")
            if size
            else np.zeros(0, dtype=np.dtype(dtype))
        )
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)


def load_pair(data_dir: Path, split: str, dtype: str) -> tuple[Split, Split]:
    """The source and target sides of a prepared split."""
    return Split(Path(data_dir) / f"{split}.src", dtype), Split(Path(data_dir) / f"{split}.tgt", dtype)
