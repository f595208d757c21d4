"""Token-budget batches, bucketed by length, and collation into padded tensors.

An epoch's batch list is a pure function of (lengths, max_tokens, seed, epoch), so a resumed run
rebuilds it and skips the batches already consumed: the data position is just (epoch, index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Index batches whose padded size (count x longest side, +1 for EOS/BOS) fits `max_tokens`.

    Sentences are sorted by length with a seeded random tie-break, cut into batches, and the batch
    order is shuffled, so each epoch differs but padding stays small.
    """
    rng = np.random.default_rng([seed, epoch])
    longest = np.maximum(src_lens, tgt_lens) + 1
    order = np.lexsort((rng.random(len(longest)), longest))
    batches = pack(order, longest, max_tokens)
    perm = rng.permutation(len(batches))
    return [batches[j] for j in perm]


def pack(order: Sequence[int], widths: Sequence[int], max_tokens: int) -> list:
    """Cut `order` (indices, in the order given) into consecutive batches whose count x widest
    member's width fits `max_tokens`; a member wider than the budget is a batch of its own.

    Training passes a length-sorted, shuffled order; the translator a longest-first one."""
    batches, start, width = [], 0, 0
    for i, idx in enumerate(order):
        width_i = max(width, int(widths[idx]))
        if i > start and width_i * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, width_i = i, int(widths[idx])
        width = width_i
    if start < len(order):
        batches.append(order[start:])
    return batches


def pad_batch(seqs: list[np.ndarray], pad_id: int, prefix: int | None = None, suffix: int | None = None) -> torch.Tensor:
    """(B, L) long tensor of sequences with optional BOS-like prefix / EOS-like suffix, right-padded."""
    extra = (prefix is not None) + (suffix is not None)
    width = max(len(s) for s in seqs) + extra
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        row = list(s)
        if prefix is not None:
            row = [prefix, *row]
        if suffix is not None:
            row = [*row, suffix]
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate(src_split, tgt_split, indices: np.ndarray, ids: dict) -> dict[str, torch.Tensor]:
    """Source `x EOS`, decoder input `BOS y`, decoder target `y EOS` for the given pair indices."""
    src = [src_split[i] for i in indices]
    tgt = [tgt_split[i] for i in indices]
    batch = {
        "src": pad_batch(src, ids["pad_id"], suffix=ids["eos_id"]),
        "tgt_in": pad_batch(tgt, ids["pad_id"], prefix=ids["bos_id"]),
        "tgt_out": pad_batch(tgt, ids["pad_id"], suffix=ids["eos_id"]),
    }
    batch["ntokens"] = batch["tgt_out"].ne(ids["pad_id"]).sum()
    return batch
