"""Per-sublayer gradient norms: the measurement the norm-placement study rests on."""

from __future__ import annotations

import torch
from torch import nn

SUBLAYERS = ("self_attn", "cross_attn", "ff")


def sublayer_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each sublayer's weights, e.g. {'encoder.0.ff': 0.12, ...}.

    Covers every encoder and decoder layer; norm parameters are excluded so the numbers compare
    across placements.
    """
    norms: dict[str, float] = {}
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack)):
            for name in SUBLAYERS:
                sub = getattr(layer, name, None)
                if sub is None:
                    continue
                grads = [p.grad.detach().float().norm() for p in sub.parameters() if p.grad is not None]
                if grads:
                    norms[f"{stack}.{i}.{name}"] = float(torch.stack(grads).norm())
    return norms
