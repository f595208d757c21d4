"""Subword regularization: a fresh SentencePiece segmentation of the training pairs every epoch.

With `train.subword_alpha > 0` each epoch trains on segmentations sampled from the unigram model
(Kudo 2018): for every sentence, one of its `train.subword_nbest` best segmentations, drawn with
probability proportional to P(segmentation)^alpha (smaller alpha: more varied). The n-best lists
are computed once when training starts (from the text recovered by decoding the stored ids; a
sentence holding an unknown-piece id cannot round-trip and keeps its stored ids); each epoch then
only draws, with numpy, from a generator seeded by (seed, epoch, side). So an epoch's data is a
pure function of the run and resume stays exact. (SentencePiece's own `enable_sampling` is not
used: with a fixed seed its samples still differ between processes.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcli.config import TrainConfig
from mtcli.data.manifest import SPECIAL, Manifest
from mtcli.data.splits import Split, ids_dtype
from mtcli.errors import MtcliError


class SampledSplit(Split):
    """One side of an epoch's sampled training data, held in memory (indexes like `Split`)."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray):
        self.ids, self.lengths = ids, lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])


class SubwordSampler:
    """The n-best segmentations of one stored training side, and per-epoch draws from them."""

    def __init__(self, split: Split, model_file: Path, alpha: float, nbest: int):
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(model_file))
        piece_scores = np.array([processor.get_score(i) for i in range(processor.get_piece_size())])
        stored = [split[i] for i in range(len(split))]
        text = processor.decode([ids.tolist() for ids in stored])
        candidates, counts = [], np.empty(len(stored), dtype=np.int64)
        for i, (ids, nbest_ids) in enumerate(zip(stored, processor.nbest_encode(text, nbest_size=nbest))):
            if (ids == SPECIAL["unk_id"]).any() or not nbest_ids:
                nbest_ids = [ids.tolist()]
            # a canonical order, so that ties never depend on the order SentencePiece returns
            nbest_ids = sorted(nbest_ids, key=lambda c: (-float(piece_scores[c].sum()), c))
            candidates.extend(nbest_ids)
            counts[i] = len(nbest_ids)
        self.tok_len = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
        self.tok_start = np.concatenate([[0], np.cumsum(self.tok_len)[:-1]])
        self.ids = np.fromiter((t for c in candidates for t in c), dtype=ids_dtype(len(piece_scores)), count=int(self.tok_len.sum()))
        self.sentence = np.repeat(np.arange(len(stored)), counts)
        self.first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # log P(segmentation) = sum of its pieces' log probabilities (unigram model)
        nonempty = self.tok_len > 0
        self.logits = np.zeros(len(candidates))
        if nonempty.any():
            self.logits[nonempty] = alpha * np.add.reduceat(piece_scores[self.ids], self.tok_start[nonempty])

    def sample(self, seed: np.random.SeedSequence | int) -> SampledSplit:
        """One segmentation per sentence, drawn by the Gumbel-max trick from a seeded generator."""
        noisy = self.logits + np.random.default_rng(seed).gumbel(size=len(self.logits))
        order = np.lexsort((-noisy, self.sentence))
        chosen = order[self.first]
        lengths = self.tok_len[chosen]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = self.ids[np.repeat(self.tok_start[chosen], lengths) + within]
        return SampledSplit(ids, lengths)


def epoch_seed(seed: int, epoch: int, side: int) -> np.random.SeedSequence:
    """The generator seed of one side's sample in one epoch."""
    return np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, side])


def subword_samplers(data_dir: Path, manifest: Manifest, train: tuple[Split, Split], t: TrainConfig) -> tuple | None:
    """(source, target) samplers when `train.subword_alpha` > 0, else None."""
    if t.subword_alpha <= 0:
        return None
    if manifest.tokenizer_type != "unigram":
        raise MtcliError(f"train.subword_alpha={t.subword_alpha} samples segmentations of a unigram model, "
                         f"but tokenizer.type is {manifest.tokenizer_type}; set train.subword_alpha=0")  # fmt: skip
    if manifest.ids != SPECIAL:
        raise MtcliError(f"train.subword_alpha={t.subword_alpha}: an imported model numbers its pieces its own "
                         "way (spm.ids.json) and sampled segmentations would not follow it; set train.subword_alpha=0")  # fmt: skip
    models = manifest.spm_models * 2 if len(manifest.spm_models) == 1 else manifest.spm_models  # (source, target)
    return tuple(
        SubwordSampler(side, Path(data_dir) / model, t.subword_alpha, t.subword_nbest)
        for side, model in zip(train, models)
    )
