"""Loss, optimizer and learning-rate schedules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtcli.errors import MtcliError


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float, pad_id: int):
    """Summed label-smoothed cross-entropy and summed NLL over non-pad target tokens.

    logits (B, T, V), target (B, T). The smoothed loss is what we optimize; the plain NLL gives
    perplexity.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_target = target.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_target, ignore_index=pad_id, label_smoothing=smoothing, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(flat_logits, flat_target, ignore_index=pad_id, reduction="sum")
    return loss, nll


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """Adam or AdamW from the train config (eps 1e-9 as in Vaswani et al. 2017)."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(params)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-9, weight_decay=cfg.weight_decay)
    try:
        # The fused kernel is one op per step instead of ~10 per tensor: 4x faster on CPU here,
        # and far less exposed to thread stalls on a loaded machine.
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch or unsupported device
        return cls(params, **kwargs)


def lr_factor(step: int, cfg) -> float:
    """Multiplier of `train.lr` at update `step` (1-based): warmup, then the chosen decay."""
    warmup = cfg.warmup_steps
    if warmup and step < warmup:
        return step / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        # Vaswani et al.: decay with 1/sqrt(step) after warmup; peak lr is train.lr.
        return math.sqrt(max(warmup, 1) / max(step, 1))
    if not cfg.max_steps:
        raise MtcliError(f"train.schedule: {cfg.schedule} decay needs train.max_steps")
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    if cfg.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
