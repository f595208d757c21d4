"""Residual connections and normalization placement: the one module that owns the choice.

Each sublayer F (self-attention, cross-attention, feed-forward) is wrapped by `Residual`:

    post      LN(x + F(x))          Vaswani et al. 2017
    pre       x + F(LN(x))          Xiong et al. 2020 (plus a final LN on each stack)
    deepnorm  LN(alpha*x + F(x))    Wang et al. 2022 (with beta-scaled init, see `deepnorm_constants`)
    none      x + F(x)              ablation: no normalization at all

`residual=False` drops the skip term (ablation). Layers never test the placement themselves,
and the parameter names (`norm.weight`, ...) are the same for every placement.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtcli.config import NORM_PLACEMENTS
from mtcli.model.dropout import Dropout


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) * w with a hand-written backward.

    torch has no fused RMSNorm kernel on CPU; autograd through the composed ops records ~10 of
    them and took 2-3x longer (forward + backward) than this on this project's 2-core CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (..., 1)
        x_hat = x * rms
        ctx.save_for_backward(x_hat, rms, weight)
        return x_hat * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_hat, rms, weight = ctx.saved_tensors
        g = grad * weight
        # d/dx of x*r: r * (g - x_hat * mean(g * x_hat)), since dr/dx = -r^3 x / D.
        grad_x = (g - x_hat * (g * x_hat).mean(-1, keepdim=True)).mul_(rms)
        grad_w = (grad * x_hat).reshape(-1, x_hat.size(-1)).sum(0)
        return grad_x, grad_w, None


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): rescale only, no centring, no bias."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            # Accumulate in float32: the mean of squares overflows/underflows in half precision.
            return _RMSNormFunction.apply(x.float(), self.weight.float(), self.eps).to(x.dtype)
        return _RMSNormFunction.apply(x, self.weight, self.eps)


def make_norm(norm_type: str, d_model: int, eps: float) -> nn.Module:
    """A LayerNorm or RMSNorm over the last dimension."""
    if norm_type == "layernorm":
        return nn.LayerNorm(d_model, eps=eps)
    if norm_type == "rmsnorm":
        return RMSNorm(d_model, eps=eps)
    raise ValueError(f"unknown norm_type {norm_type!r}")


def final_norm(norm: str, norm_type: str, d_model: int, eps: float) -> nn.Module:
    """The norm that closes a stack: only pre-LN needs one (its residual stream is never normed)."""
    return make_norm(norm_type, d_model, eps) if norm == "pre" else nn.Identity()


class Residual(nn.Module):
    """Wraps one sublayer with its skip connection, dropout and norm in the chosen placement."""

    def __init__(
        self,
        d_model: int,
        norm: str,
        norm_type: str,
        dropout: float,
        eps: float,
        alpha: float,
        residual: bool,
    ):
        super().__init__()
        if norm not in NORM_PLACEMENTS:
            raise ValueError(f"unknown norm placement {norm!r}; expected one of {NORM_PLACEMENTS}")
        self.placement = norm
        self.alpha = alpha
        self.residual = residual
        self.norm = nn.Identity() if norm == "none" else make_norm(norm_type, d_model, eps)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]):
        """x: (B, L, D); `sublayer` maps (B, L, D) -> (B, L, D)."""
        if self.placement == "pre":
            out = self.dropout(sublayer(self.norm(x)))
            return x + out if self.residual else out
        out = self.dropout(sublayer(x))
        if self.residual:
            out = out + (self.alpha * x if self.alpha != 1.0 else x)
        return self.norm(out)


def deepnorm_constants(n_enc: int, n_dec: int) -> dict[str, float]:
    """DeepNorm alpha/beta for an N-layer encoder, M-layer decoder (Wang et al. 2022, Table 1)."""
    n, m = n_enc, n_dec
    return {
        "encoder_alpha": 0.81 * (n**4 * m) ** (1 / 16),
        "encoder_beta": 0.87 * (n**4 * m) ** (-1 / 16),
        "decoder_alpha": (3 * m) ** (1 / 4),
        "decoder_beta": (12 * m) ** (-1 / 4),
    }
