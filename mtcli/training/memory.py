"""Refuse a model that cannot fit before allocating it: parameters x 16 bytes plus activations.

Training in float32 with Adam keeps four numbers per parameter (weight, gradient, two moments).
Activations are estimated per batch token and layer from the sizes the layers keep for the
backward pass; the estimate is rough (within a factor of ~2), so a run is refused only when it
exceeds the memory that is free now, and a config that does fit is never stopped by it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mtcli.errors import MtcliError

BYTES_PER_PARAM = 16  # fp32 weight + gradient + Adam's two moments


def count_parameters(model_cfg, vocab) -> int:
    """The exact parameter count, from a model built on the meta device (nothing allocated)."""
    from mtcli.model.transformer import build_model

    with torch.device("meta"):
        model = build_model(model_cfg, vocab)
    return sum(p.numel() for p in model.parameters())


def activation_bytes(cfg, vocab) -> int:
    """Rough float32 activation memory of one training batch of `train.max_tokens` tokens."""
    m, tokens = cfg.model, cfg.train.max_tokens
    length = min(cfg.data.filters.max_tokens, m.max_positions)  # longest sentence in a batch
    per_layer = 12 * m.d_model + 2 * m.d_ff + 3 * m.n_heads * length  # residual stream, FFN, attention
    layers = m.encoder_layers + 2 * m.decoder_layers  # decoder layers attend twice
    logits = 3 * vocab.tgt_size  # logits, log-probabilities and their gradient
    return 4 * tokens * (per_layer * layers + logits)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` now (CPU: MemAvailable, capped by a cgroup limit), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        return None
    limit = _cgroup_limit()
    return min(free, limit) if free is not None and limit is not None else free


def _cgroup_limit() -> int | None:
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def check_memory(cfg, vocab, device: torch.device) -> None:
    """One `error:` line when the model and a batch clearly cannot fit on `device`."""
    if os.environ.get("MTCLI_SKIP_MEMORY_CHECK"):
        return
    free = available_bytes(device)
    if free is None:
        return
    params = count_parameters(cfg.model, vocab)
    need = params * BYTES_PER_PARAM + activation_bytes(cfg, vocab)
    if need > free:
        gb = 1 << 30
        raise MtcliError(
            f"model: {params:,} parameters need about {need / gb:,.1f} GB to train ({BYTES_PER_PARAM} bytes "
            f"each plus activations for train.max_tokens={cfg.train.max_tokens}), but {device} has "
            f"{free / gb:,.1f} GB free; make model.d_model, d_ff or the layer counts smaller"
        )
