"""Search settings as plain values: shared by mtcli's beam search and the torch-free CTranslate2 path."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from mtcli.config import DecodeConfig


@dataclass(frozen=True)
class SearchParams:
    """Plain search settings, built from a decode config by `from_decode` (its schema holds the
    defaults), with the tokenizer's special ids."""

    beam_size: int
    nbest: int
    length_penalty: float
    max_len_a: float
    max_len_b: int
    min_len: int
    sampling: bool
    temperature: float
    top_k: int
    top_p: float
    bos_id: int
    eos_id: int
    pad_id: int

    @classmethod
    def from_decode(cls, d: DecodeConfig, ids, beam: int | None = None, nbest: int | None = None) -> SearchParams:
        """From `decode` settings and anything with `bos_id`/`eos_id`/`pad_id` (a Tokenizer);
        `beam`/`nbest` override the config's (the n-best list is at most the beam unless sampling)."""
        beam_size = beam or d.beam_size
        nbest = nbest or d.nbest
        return cls(
            beam_size=beam_size, nbest=nbest if d.sampling else min(nbest, beam_size),
            length_penalty=d.length_penalty, max_len_a=d.max_len_a, max_len_b=d.max_len_b, min_len=d.min_len,
            sampling=d.sampling, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
            bos_id=ids.bos_id, eos_id=ids.eos_id, pad_id=ids.pad_id,
        )  # fmt: skip


def with_search(translator, beam: int, nbest: int):
    """A copy of a translator (torch's `Translator` or a `CT2Translator`) with another beam size and
    n-best; the model and tokenizer are shared."""
    other = copy.copy(translator)
    other.params = dataclasses.replace(translator.params, beam_size=beam, nbest=nbest)
    return other
