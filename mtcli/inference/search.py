"""Batched beam search (and sampling) over the model's `encode`/`decode` with the per-layer cache.

Every sentence of a batch keeps `beam_size` live hypotheses. Each step decodes only the newest
token (earlier keys/values come from the cache; step 0, where all K beams are still BOS, decodes
one row per sentence and then copies it K times), takes the 2K best continuations per sentence,
sets aside those that end in EOS among the top K, and keeps the K best that do not. A sentence is
done when it has K finished hypotheses or reaches its maximum length; done sentences leave the
batch so later steps only pay for the live ones. Beam size 1 is exactly greedy search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtcli.inference.params import SearchParams  # noqa: F401  (search takes it; import it from here or there)

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """A finished translation: target ids (no BOS/EOS), log-probability and normalized score."""

    tokens: list[int]
    logprob: float
    score: float


def length_norm(logprob: torch.Tensor | float, length: int, alpha: float):
    """GNMT length normalization (Wu et al. 2016): logprob / ((5 + len) / 6) ** alpha."""
    return logprob / (((5.0 + length) / 6.0) ** alpha)


def max_lengths(src: torch.Tensor, p: SearchParams, limit: int) -> torch.Tensor:
    """Per-sentence maximum output length a * src_len + b (tokens before EOS), capped by `limit`."""
    src_len = src.ne(p.pad_id).sum(1).float()
    return (p.max_len_a * src_len + p.max_len_b).long().clamp(min=1, max=limit)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim; on CPU in place, overwriting `logits` (a fresh step output)."""
    if logits.device.type == "cpu" and logits.is_contiguous():
        # Same kernel and bits as torch.log_softmax; it reads a row before writing it, so writing
        # over the input is safe and saves one (rows, vocab) tensor and its page faults per step.
        return torch._log_softmax(logits, -1, False, out=logits)
    return torch.log_softmax(logits, dim=-1)


def _step_logprobs(model, tokens, memory, pad_mask, cache, step, max_len, p, **decode) -> torch.Tensor:
    """(N, V) log-probabilities of the next token, with min/max length and PAD/BOS rules applied.

    `step` is the step of every row, or (continuous batching) a (N,) tensor of each row's own;
    `decode` goes to `model.decode` (positions and self-attention mask of continuous batching)."""
    logits = model.decode(tokens[:, -1:], memory, pad_mask, cache, **decode)[:, -1].float()
    lprobs = _log_softmax(logits)
    lprobs[:, p.pad_id] = NEG_INF
    lprobs[:, p.bos_id] = NEG_INF
    early = step < p.min_len
    if torch.is_tensor(early):
        lprobs[early, p.eos_id] = NEG_INF
    elif early:
        lprobs[:, p.eos_id] = NEG_INF
    at_max = step >= max_len  # (N,) rows that must end now
    if at_max.any():
        eos_col = lprobs[at_max, p.eos_id].clone()
        lprobs[at_max] = NEG_INF
        lprobs[at_max, p.eos_id] = torch.where(torch.isfinite(eos_col), eos_col, 0.0)
    return lprobs


@torch.no_grad()
def beam_search(model, src: torch.Tensor, p: SearchParams) -> list[list[Hypothesis]]:
    """Translate a padded batch src (B, S); returns up to `nbest` hypotheses per sentence, best first."""
    if p.sampling:
        return sample(model, src, p)
    k, n = p.beam_size, src.size(0)
    device = src.device
    memory, pad_mask = model.encode(src)  # (B, S, D): one row per sentence, shared by its K beams
    limit = model.max_positions - 1
    max_len = max_lengths(src, p, limit).repeat_interleave(k)  # (B*K,)
    tokens = torch.full((n * k, 1), p.bos_id, dtype=torch.long, device=device)
    scores = torch.full((n, k), NEG_INF, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first is live at step 0
    cache = model.new_cache()
    alive = list(range(n))  # original sentence index of each row group
    last_step = max_len[::k].tolist()  # per row group, as Python ints: no tensor reads per step
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    for step in range(int(max_len.max()) + 1):
        if step == 0:  # all K beams are still the same BOS: decode one row per sentence
            lprobs = _step_logprobs(model, tokens[::k], memory, pad_mask, cache, 0, max_len[::k], p)
            lprobs = lprobs.repeat_interleave(k, 0)
        else:
            lprobs = _step_logprobs(model, tokens, memory, pad_mask, cache, step, max_len, p)
        tokens, scores, rows = advance(lprobs, scores, tokens, finished, alive, p)
        # Beam reordering (at step 0: one row per sentence becomes K); memory is per sentence.
        model.reorder_cache(cache, rows // k if step == 0 else rows)
        done = [len(finished[s]) >= k or step >= last for s, last in zip(alive, last_step)]
        if all(done):
            break
        if any(done):
            keep = torch.tensor([i for i, d in enumerate(done) if not d], device=device)
            keep_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            kept = keep.tolist()
            alive, last_step = [alive[i] for i in kept], [last_step[i] for i in kept]
            tokens, scores = tokens[keep_rows], scores[keep]
            memory, pad_mask, max_len = memory[keep], pad_mask[keep], max_len[keep_rows]
            model.reorder_cache(cache, keep_rows, keep)
    return [sorted(h, key=lambda x: -x.score)[: p.nbest] for h in finished]


def advance(lprobs, scores, tokens, finished, alive, p, starts=None):
    """One beam step from the log-probabilities (n*K, V): set aside the hypotheses that end here
    (see `_collect`) and keep each sentence's K best that do not. Returns the extended tokens, the
    live scores (n, K) and the rows of the previous step they continue (for the cache)."""
    k = p.beam_size
    top_scores, top_beam, top_tok = _top_candidates(lprobs, scores, 2 * k)  # (n, 2K) each
    is_eos = top_tok.eq(p.eos_id) & torch.isfinite(top_scores)
    _collect(finished, alive, tokens, top_scores, top_beam, is_eos, k, p, starts)
    # Live continuations: the K best candidates that do not end here.
    live_scores, pos = top_scores.masked_fill(top_tok.eq(p.eos_id), NEG_INF).topk(k, dim=1)
    rows = (torch.arange(len(alive), device=lprobs.device)[:, None] * k + top_beam.gather(1, pos)).view(-1)
    return torch.cat([tokens[rows], top_tok.gather(1, pos).view(-1, 1)], dim=1), live_scores, rows


_DIRECT_TOPK = 256  # rows this long or shorter: torch.topk directly


def topk_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x.topk(k, dim=1)` (values and indices, best first) of a 2-D tensor, faster on long CPU rows.

    On CPU, `topk` walks a row element by element; over an (N, 8000) vocabulary that was 7% of a
    beam search. Here each row is cut into `nb` interleaved blocks (block j holds columns j, j + nb,
    j + 2 nb, ...): their maxima take one vectorized `amax` pass, and a row's k best values lie in
    its k blocks with the largest maxima (any other block's maximum is at most the k-th best value),
    so `topk` then runs over k blocks only (recursively). Values are exactly `topk`'s; indices too
    unless values tie, where `topk` itself promises no order.
    """
    n, length = x.shape
    if x.device.type != "cpu" or length <= _DIRECT_TOPK or 8 * k > length:  # GPU topk is already fast
        return x.topk(min(k, length), dim=1)
    nb = min(200, max(k, round(math.sqrt(k * length))))  # blocks; topk over up to 200 stays cheap
    q = length // nb  # elements per block; the last length - q * nb columns are always candidates
    grid = x[:, : q * nb].view(n, q, nb)
    blocks = grid.amax(1).topk(k, dim=1).indices  # (n, k)
    cand = grid.gather(2, blocks[:, None, :].expand(n, q, k)).view(n, q * k)
    cols = (torch.arange(q, device=x.device)[:, None] * nb + blocks[:, None, :]).view(n, q * k)
    if q * nb < length:
        cand = torch.cat([cand, x[:, q * nb :]], 1)
        cols = torch.cat([cols, torch.arange(q * nb, length, device=x.device).expand(n, -1)], 1)
    values, pos = topk_rows(cand, k)
    return values, cols.gather(1, pos)


def _top_candidates(lprobs: torch.Tensor, scores: torch.Tensor, m: int):
    """The m best (score + log-prob) continuations of each sentence: scores, beam and token, (n, m).

    A sentence's m best over all K*V continuations are among the m best of each of its beams, so
    the vocabulary is cut to m per beam before the beam scores are added: the same sums as adding
    scores to the full (N, V) log-probabilities, without that pass over memory.
    """
    n, k = scores.shape
    row_lp, row_tok = topk_rows(lprobs, m)  # (n*K, c)
    cand = (row_lp + scores.view(-1, 1)).view(n, -1)  # (n, K*c)
    top_scores, pos = cand.topk(min(m, cand.size(1)), dim=1)
    return top_scores, pos // row_lp.size(1), row_tok.view(n, -1).gather(1, pos)


def _collect(finished, alive, tokens, top_scores, top_beam, is_eos, k, p, starts=None) -> None:
    """Set aside hypotheses that end with EOS among each sentence's top K candidates. A row's
    target ids are tokens[row, 1:] (after BOS), or from column starts[i] for row group i."""
    hits = is_eos[:, :k].nonzero().tolist()
    for i, j in hits:
        s = alive[i]
        if len(finished[s]) >= k:
            continue
        row = i * k + int(top_beam[i, j])
        ids = tokens[row, 1 if starts is None else starts[i] :].tolist()
        logprob = float(top_scores[i, j])
        score = float(length_norm(logprob, len(ids) + 1, p.length_penalty))
        finished[s].append(Hypothesis(ids, logprob, score))


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top-k tokens and the smallest set whose probability reaches top-p (nucleus)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, NEG_INF))
    return logits


@torch.no_grad()
def sample(model, src: torch.Tensor, p: SearchParams) -> list[list[Hypothesis]]:
    """Ancestral sampling with temperature, top-k and top-p; `nbest` samples per sentence."""
    n, m = src.size(0), p.nbest
    memory, pad_mask = model.encode(src)  # one row per sentence, shared by its m samples
    max_len = max_lengths(src, p, model.max_positions - 1).repeat_interleave(m)
    tokens = torch.full((n * m, 1), p.bos_id, dtype=torch.long, device=src.device)
    logprob = torch.zeros(n * m, device=src.device)
    ended = torch.zeros(n * m, dtype=torch.bool, device=src.device)
    cache = model.new_cache()
    for step in range(int(max_len.max()) + 1):
        lprobs = _step_logprobs(model, tokens, memory, pad_mask, cache, step, max_len, p)
        logits = _filter_logits(lprobs / p.temperature, p.top_k, p.top_p)
        tok = torch.multinomial(logits.softmax(-1), 1).squeeze(1)
        tok = tok.masked_fill(ended, p.pad_id)
        logprob += lprobs.gather(1, tok[:, None]).squeeze(1).masked_fill(ended, 0.0)
        tokens = torch.cat([tokens, tok[:, None]], dim=1)
        ended |= tok.eq(p.eos_id)
        if ended.all():
            break
    out: list[list[Hypothesis]] = []
    for s in range(n):
        hyps = []
        for r in range(s * m, (s + 1) * m):
            ids = [t for t in tokens[r, 1:].tolist() if t not in (p.eos_id, p.pad_id)]
            hyps.append(Hypothesis(ids, float(logprob[r]), float(length_norm(logprob[r], len(ids) + 1, p.length_penalty))))
        out.append(sorted(hyps, key=lambda h: -h.score))
    return out
