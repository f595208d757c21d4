"""Validation: teacher-forced loss/perplexity and BLEU/chrF of translations from the search code."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mtcli.data.batching import collate, token_batches
from mtcli.training.optim import label_smoothed_nll


@torch.no_grad()
def valid_loss(model, src_split, tgt_split, ids: dict, max_tokens: int, smoothing: float, device) -> dict:
    """Mean label-smoothed loss, NLL and perplexity per target token over a split."""
    model.eval()
    loss_sum = nll_sum = ntok = 0.0
    # Valid pairs are not length-filtered; one longer than the position table is left out here.
    limit = model.max_positions - 1  # room for EOS (source) and BOS (target)
    fits = (src_split.lengths <= limit) & (tgt_split.lengths <= limit)
    for idx in token_batches(src_split.lengths, tgt_split.lengths, max_tokens, seed=0, epoch=0):
        idx = [i for i in idx if fits[i]]
        if not idx:
            continue
        b = collate(src_split, tgt_split, idx, ids)
        logits = model(b["src"].to(device), b["tgt_in"].to(device))
        loss, nll = label_smoothed_nll(logits, b["tgt_out"].to(device), smoothing, ids["pad_id"])
        loss_sum, nll_sum, ntok = loss_sum + float(loss), nll_sum + float(nll), ntok + int(b["ntokens"])
    nll = nll_sum / max(ntok, 1)
    return {"valid_loss": loss_sum / max(ntok, 1), "valid_nll": nll, "valid_ppl": math.exp(min(nll, 50.0))}


def read_lines(path: Path, limit: int | None = None) -> list[str]:
    """The lines of a UTF-8 text file without newlines (first `limit` only)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


@torch.no_grad()
def valid_bleu(translator, src_lines: list[str], ref_lines: list[str]) -> dict:
    """sacreBLEU BLEU and chrF of the translator's output, with the BLEU signature."""
    import sacrebleu

    translator.model.eval()
    hyps = [h[0]["text"] if h else "" for h in translator.translate(src_lines)]
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hyps, [ref_lines]), chrf.corpus_score(hyps, [ref_lines])
    return {
        "valid_bleu": round(b.score, 2),
        "valid_chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
    }
