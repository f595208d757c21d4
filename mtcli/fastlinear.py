"""Inference-only float32 fast path for CPU search: linears on weights packed once for oneDNN.

torch's `nn.Linear` on CPU calls MKL's sgemm on the plain weight, which is packed into the GEMM's
internal layout again on every call. `pack_linears` swaps every `nn.Linear` and the tied output
projection for a `PackedLinear`, whose weight is reordered once into oneDNN's blocked layout. On
the development VM that ran the decoder's GEMMs at 186-223 GFLOP/s against 141-181 for
`nn.Linear` (docs/BENCHMARKS.md, issue 5). It is still float32 (same math, another summation
order), so translations match the unpacked model up to rounding.

`MTCLI_FAST_LINEAR=0` turns it off. Without the oneDNN ops, off the CPU, or for other dtypes the
model is returned unchanged.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

ENV = "MTCLI_FAST_LINEAR"
BATCH_HINT = 160  # rows per decoder step at beam 5 x 32 sentences: the shape the blocking targets


def available() -> bool:
    """True when torch has oneDNN, enabled, and the packed-linear ops (CPU builds with MKLDNN)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


def enabled() -> bool:
    """False when $MTCLI_FAST_LINEAR is 0/false/no/off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class PackedLinear(nn.Module):
    """`y = x W^T + b` through oneDNN with W reordered once (inference only, float32, CPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, batch_hint: int = BATCH_HINT):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Plain attributes, not buffers: an opaque oneDNN tensor cannot be moved, copied or saved.
        w = weight.detach().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
        self.bias = None if bias is None else bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def __deepcopy__(self, memo) -> PackedLinear:
        # An opaque oneDNN tensor has no storage to copy: repack from its dense form.
        return PackedLinear(self.packed.to_dense(), copy.deepcopy(self.bias, memo))

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def _packable(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _packed_replacements(model: nn.Module) -> dict[str, PackedLinear]:
    """Qualified name -> packed replacement for every plain `nn.Linear` and a tied output projection."""
    # Exact type: quantized linears and other subclasses are left alone.
    out = {name: PackedLinear(m.weight, m.bias) for name, m in model.named_modules() if type(m) is nn.Linear}
    if getattr(model, "output_proj", False) is None and hasattr(model, "tgt_embed"):
        out["output_proj"] = PackedLinear(model.tgt_embed.tokens.weight)  # tied: F.linear on the embedding
    return out


def pack_linears(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` (or a copy) with every linear on packed weights; `model` unchanged when not possible.

    With tied embeddings (`output_proj is None`) the output projection becomes a packed copy of the
    target embedding matrix and the embedding lookup keeps the original. The result is for
    inference only: the packed modules hold no parameters (no training, no state_dict of them).
    """
    if not (enabled() and available() and _packable(model)):
        return model
    try:
        swaps = _packed_replacements(model)
    except RuntimeError:  # a oneDNN build that refuses these shapes: keep plain float32
        return model
    fast = model if inplace else copy.deepcopy(model)
    for name, packed in swaps.items():
        parent, _, attr = name.rpartition(".")
        setattr(fast.get_submodule(parent), attr, packed)
    return fast.eval()


def packed_count(model: nn.Module) -> int:
    """How many `PackedLinear` modules `model` holds."""
    return sum(isinstance(m, PackedLinear) for m in model.modules())
