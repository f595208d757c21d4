"""Continuous (iteration-level) beam search: sentences join and leave the batch between steps.

`beam_search` translates a fixed batch: every sentence waits for the longest, and a sentence that
arrives meanwhile waits for the next batch. A server with many clients sending one sentence each
wants neither, so `BeamStream` keeps one running batch: `add` encodes new sentences and puts their
beams beside the running ones, `step` decodes one token for every row and returns the sentences
that ended. Search itself is `beam_search`'s (same candidates, same rules, same hypotheses), so a
sentence gets the translation `mtcli translate` gives it.

Rows of one batch are at different steps, so each row has its own position, and its
self-attention sees only its own history: the cache holds the batch's positions right-aligned
(the newest at the end), a row that joined later starts as a copy of another row's history, and
`self_pad_mask` hides it. Beam reordering, dropped rows and added rows are gathered into the
cache once, before the next step. Leading positions no row reads any more are trimmed; source memories are padded to the
longest source in the batch and masked as in any batch.
"""

from __future__ import annotations

import torch

from mtcli.inference.params import SearchParams
from mtcli.inference.search import NEG_INF, Hypothesis, _step_logprobs, advance, max_lengths


class BeamStream:
    """A running beam-search batch of one model and one set of search settings (not sampling)."""

    def __init__(self, model, params: SearchParams, device):
        if params.sampling:
            raise ValueError("BeamStream runs beam search; sampling translates whole batches")
        self.model, self.p, self.device = model, params, torch.device(device)
        self.limit = model.max_positions - 1
        self._reset()

    def _reset(self) -> None:
        k = self.p.beam_size
        self.keys: list = []  # the caller's key of each sentence, in row-group order
        self.steps: list[int] = []  # tokens each sentence has decoded so far
        self.last_step: list[int] = []  # the step at which it must end
        self.src_tokens: list[int] = []  # its source length + EOS (the caller's budget)
        self.finished: dict = {}
        self.tokens = torch.empty(0, 1, dtype=torch.long, device=self.device)  # right-aligned histories
        self.scores = torch.empty(0, k, device=self.device)
        self.max_len = torch.empty(0, dtype=torch.long, device=self.device)  # per row
        self.pad_mask = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # per sentence, source
        self.cache = self.model.new_cache()
        self.order: torch.Tensor | None = None  # rows of the self-attention caches the next step reads

    def __len__(self) -> int:
        """Sentences in the batch."""
        return len(self.keys)

    @property
    def source_tokens(self) -> int:
        """Source tokens (with EOS) of the sentences in the batch."""
        return sum(self.src_tokens)

    @torch.no_grad()
    def add(self, seqs: list[list[int]], keys: list) -> None:
        """Put sentences (source ids, no EOS; non-empty) into the batch; `step` returns each with
        its key once it has ended."""
        from mtcli.data.batching import pad_batch

        if not seqs:
            return
        p, k, m = self.p, self.p.beam_size, len(seqs)
        src = pad_batch(seqs, p.pad_id, suffix=p.eos_id).to(self.device)
        memory, pad_mask = self.model.encode(src)
        cross = self.model.cross_cache(memory)
        width = max(self.pad_mask.size(1), pad_mask.size(1))
        self.pad_mask = torch.cat([_pad_to(self.pad_mask, width, True), _pad_to(pad_mask, width, True)])
        for layer, new in zip(self.cache, cross):
            for name, value in new.items():
                old = layer["cross"].get(name)
                layer["cross"][name] = value if old is None else torch.cat(
                    [_pad_to(old, width, 0.0, dim=2), _pad_to(value, width, 0.0, dim=2)])  # fmt: skip
        if self.cache[0]["self"].k is not None:
            # New rows start as copies of row 0: finite values, which their self_pad_mask hides.
            rows = len(self.tokens) if self.order is None else len(self.order)
            kept = torch.arange(rows, device=self.device) if self.order is None else self.order
            self.order = torch.cat([kept, kept.new_zeros(m * k)])
        max_len = max_lengths(src, p, self.limit)
        self.max_len = torch.cat([self.max_len, max_len.repeat_interleave(k)])
        scores = torch.full((m, k), NEG_INF, device=self.device)
        scores[:, 0] = 0.0  # all beams start identical: only the first is live
        self.scores = torch.cat([self.scores, scores])
        tokens = torch.full((m * k, self.tokens.size(1)), p.pad_id, dtype=torch.long, device=self.device)
        tokens[:, -1] = p.bos_id
        self.tokens = torch.cat([self.tokens, tokens])
        self.keys += keys
        self.steps += [0] * m
        self.last_step += max_len.tolist()
        self.src_tokens += [len(s) + 1 for s in seqs]
        self.finished.update((key, []) for key in keys)

    @torch.no_grad()
    def step(self) -> list[tuple[object, list[Hypothesis]]]:
        """Decode one token for every row; return (key, n-best hypotheses) of the sentences that ended."""
        if not self.keys:
            return []
        p, k = self.p, self.p.beam_size
        if self.order is not None:  # beam reordering, dropped and added rows: one gather per step
            for layer in self.cache:
                layer["self"].select(self.order)
            self.order = None
        steps = torch.tensor(self.steps, device=self.device).repeat_interleave(k)  # per row
        width = self.cache[0]["self"].size + 1  # positions after this step's append
        hide = None  # True at the cached positions before a row's own history
        if min(self.steps) + 1 < width:
            hide = torch.arange(width, device=self.device) < (width - 1 - steps)[:, None]
        lprobs = _step_logprobs(self.model, self.tokens, None, self.pad_mask, self.cache, steps, self.max_len, p,
                                positions=steps, self_pad_mask=hide)  # fmt: skip
        starts = [self.tokens.size(1) - s for s in self.steps]
        self.tokens, self.scores, self.order = advance(lprobs, self.scores, self.tokens, self.finished, self.keys, p,
                                                       starts)  # fmt: skip
        done = [len(self.finished[key]) >= k or s >= last for key, s, last in zip(self.keys, self.steps, self.last_step)]
        self.steps = [s + 1 for s in self.steps]
        ended = [(key, sorted(self.finished.pop(key), key=lambda h: -h.score)[: p.nbest])
                 for key, d in zip(self.keys, done) if d]  # fmt: skip
        if all(done):
            self._reset()
        elif ended:
            self._keep([i for i, d in enumerate(done) if not d])
        return ended

    def _keep(self, kept: list[int]) -> None:
        """Drop the sentences not in `kept`, then the positions and source columns no one reads."""
        k, device = self.p.beam_size, self.device
        keep = torch.tensor(kept, device=device)
        keep_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
        for name in ("keys", "steps", "last_step", "src_tokens"):
            setattr(self, name, [getattr(self, name)[i] for i in kept])
        history = max(self.steps)  # cached positions the oldest sentence still reads
        self.tokens = self.tokens[keep_rows, -(history + 1) :]
        self.scores, self.max_len, self.order = self.scores[keep], self.max_len[keep_rows], self.order[keep_rows]
        pad_mask = self.pad_mask[keep]
        width = int((~pad_mask).sum(1).max())  # sources are right-padded
        self.pad_mask = pad_mask[:, :width]
        for layer in self.cache:
            layer["self"].trim(history)
            for name, value in layer["cross"].items():
                layer["cross"][name] = value[keep, :, :width]


def _pad_to(x: torch.Tensor, width: int, value, dim: int = 1) -> torch.Tensor:
    """x padded with `value` at the end of `dim` to `width`."""
    extra = width - x.size(dim)
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_full(shape, value)], dim)
