"""Cleaning, filters with reasons, stable hashes and the grouped train/valid/test split.

Small pieces over strings and numpy arrays; `prepare` streams a corpus through them. Reasons
(the keys counted in the manifest), in the order they are checked:

    empty         a side is empty after cleanup (every split)
    max_chars     a side is longer than filters.max_chars characters (train)
    eval_overlap  the source sentence is a valid/test source sentence (train)
    duplicate     the exact (source, target) pair was seen before (train)
    max_tokens    a side has more than filters.max_tokens SentencePiece tokens (train)
    ratio         the longer side has more than filters.max_ratio times the tokens of the shorter (train)
"""

from __future__ import annotations

import hashlib
import heapq
import re
import unicodedata

import numpy as np

from mtcli.config import FilterConfig

REASONS = ("empty", "max_chars", "eval_overlap", "duplicate", "max_tokens", "ratio")
TRAIN, VALID, TEST, DROPPED = 0, 1, 2, 255
SPLIT_CODES = {"train": TRAIN, "valid": VALID, "test": TEST}

# C0/C1 control characters other than whitespace (which the split/join below handles).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\ufeff]")


def clean_text(text: str) -> str:
    """NFC-normalize, drop control characters and collapse every whitespace run to one space."""
    text = unicodedata.normalize("NFC", text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    return " ".join(text.split())


def pair_reason(src: str, tgt: str, max_chars: int | None) -> str | None:
    """The first text-level filter a cleaned pair fails (None when it passes)."""
    if not src or not tgt:
        return "empty"
    if max_chars is not None and (len(src) > max_chars or len(tgt) > max_chars):
        return "max_chars"
    return None


def token_reasons(n_src: np.ndarray, n_tgt: np.ndarray, filters: FilterConfig) -> list[str | None]:
    """The token-level filter each pair fails (None when it passes), from token counts."""
    too_long = (n_src > filters.max_tokens) | (n_tgt > filters.max_tokens)
    longer, shorter = np.maximum(n_src, n_tgt), np.maximum(np.minimum(n_src, n_tgt), 1)
    # Short pairs are exempt: "Go." -> "Va !" has a meaningless ratio.
    bad_ratio = (longer >= filters.ratio_min_tokens) & (longer > filters.max_ratio * shorter)
    return [
        "max_tokens" if t else ("ratio" if r else None)
        for t, r in zip(too_long.tolist(), bad_ratio.tolist())
    ]


def stable_hash(text: str, seed: int | None = None) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted); with a seed,
    a seeded one (a random-looking rank that depends only on the text and the seed)."""
    key = b"" if seed is None else str(seed).encode()
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


# Closing sentence punctuation, with the space French puts before "?" and "!".
_CLOSING = re.compile(r"\s*[.!?\u2026\u3002\uff01\uff1f]+$")


def strip_closing(text: str) -> str:
    """`text` without its closing sentence punctuation ("Où est la gare ?" -> "Où est la gare")."""
    return _CLOSING.sub("", text)


def unpunctuated_copies(
    src: list[str], tgt: list[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Copies of a seeded `fraction` of the pairs whose two sides end in sentence punctuation,
    with that punctuation removed from both sides.

    The choice depends only on the pair and the seed (not on order or chunking)."""
    threshold = int(fraction * 2**64)
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt):
        bare_s, bare_t = strip_closing(s), strip_closing(t)
        if bare_s == s or bare_t == t or not bare_s or not bare_t:
            continue
        if stable_hash(f"{s}\t{t}", seed) < threshold:
            out_src.append(bare_s)
            out_tgt.append(bare_t)
    return out_src, out_tgt


def pair_hash(src: str, tgt: str) -> int:
    """Hash of a cleaned pair (cleaned text holds no tab, so the join is unambiguous)."""
    return stable_hash(src + "\t" + tgt)


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a hash appears for the first time (exact-duplicate removal)."""
    keep = np.zeros(len(hashes), dtype=bool)
    if len(hashes):
        _, first = np.unique(hashes, return_index=True)
        keep[first] = True
    return keep


class GroupSplitter:
    """Carves valid/test out of a stream of train pairs in whole source-sentence groups, so that no
    valid/test source sentence appears in train.

    Groups are ranked by a seeded hash of their source sentence (`stable_hash(src, seed)`, the key)
    and the best-ranked groups go to valid, then test: the split depends only on the seed and the
    set of sentences, not on their order. Only the best-ranked groups holding about four times
    valid+test pairs are remembered, so memory does not grow with the corpus.
    """

    def __init__(self, valid_size: int, test_size: int):
        self.sizes = {VALID: valid_size, TEST: test_size}
        self.budget = 4 * (valid_size + test_size)
        self.groups: dict[int, list[int]] = {}  # key -> line numbers of its pairs
        self.heap: list[int] = []  # negated keys: the worst-ranked group held is on top
        self.held = 0  # pairs held

    def add(self, key: int, line: int) -> None:
        """Offer the pair on `line` (of the cleaned work file) whose source sentence has `key`."""
        group = self.groups.get(key)
        if group is None:
            if not self.budget or (self.held >= self.budget and key > -self.heap[0]):
                return
            group = self.groups[key] = []
            heapq.heappush(self.heap, -key)
        group.append(line)
        self.held += 1
        # Drop the worst-ranked group while the others still hold the budget.
        while self.held - len(self.groups[-self.heap[0]]) >= self.budget:
            self.held -= len(self.groups.pop(-heapq.heappop(self.heap)))

    def assign(self, codes: np.ndarray) -> dict[str, int]:
        """Set `codes[line]` to VALID/TEST for the chosen groups' live (TRAIN) lines; returns counts.

        Groups are taken in rank order when they fit, so the sizes are exact whenever possible.
        """
        taken, counts = set(), {}
        for code, target in self.sizes.items():
            total = 0
            for key in sorted(self.groups):
                if total >= target:
                    break
                lines = [line for line in self.groups[key] if codes[line] == TRAIN]
                if key in taken or not lines or total + len(lines) > target:
                    continue
                taken.add(key)
                codes[lines] = code
                total += len(lines)
            if target:
                counts["valid" if code == VALID else "test"] = total
        return counts


class LengthStats:
    """Streaming length histogram: mean, percentiles and max without storing every length."""

    CAP = 4096

    def __init__(self):
        self.hist = np.zeros(self.CAP + 1, dtype=np.int64)
        self.max = 0
        self.total = 0

    def add(self, lengths: np.ndarray) -> None:
        """Count a batch of lengths."""
        if len(lengths):
            self.hist += np.bincount(np.minimum(lengths, self.CAP), minlength=self.CAP + 1)
            self.max = max(self.max, int(lengths.max()))
            self.total += int(lengths.sum())

    def summary(self) -> dict:
        """{mean, p50, p95, p99, max} (percentiles are capped at CAP)."""
        n = int(self.hist.sum())
        if not n:
            return {"mean": 0.0, "p50": 0, "p95": 0, "p99": 0, "max": 0}
        cum = np.cumsum(self.hist)
        pct = {f"p{q}": int(np.searchsorted(cum, q / 100 * n)) for q in (50, 95, 99)}
        return {"mean": round(self.total / n, 2), **pct, "max": self.max}
