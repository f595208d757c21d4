"""The CPU fast paths of search: linears on weights packed once for oneDNN, and int8 quantization.

torch's `nn.Linear` on CPU calls MKL's sgemm on the plain weight, which is packed into the GEMM's
internal layout again on every call. `pack_linears` swaps every `nn.Linear` and the tied output
projection for a `PackedLinear`, whose weight is reordered once into oneDNN's blocked layout. On
the development VM that ran the decoder's GEMMs at 186-223 GFLOP/s against 141-181 for
`nn.Linear` (docs/BENCHMARKS.md). It is still float32 (same math, another summation
order), so translations match the unpacked model up to rounding.

With `bf16=True` (`decode.bf16`) the weights are packed in bfloat16 and each linear multiplies
bfloat16 inputs with float32 accumulation, its output back in float32 (the residual stream, norms,
attention, the cache and the scores stay float32); CPUs with AVX512-BF16 or AMX run those GEMMs
about twice as fast. Rounding inputs and weights to 8 significant bits can change a translation.

In both, a ReLU feed-forward's first linear applies the ReLU itself (a oneDNN post-op) and hands
its output to the second linear in the GEMM's dtype.

A packed linear pads its rows up to a bucket (`bucket_rows`: at most 12.5 % more rows), so that
oneDNN's per-shape caches stop growing once a server has seen each bucket; `MTCLI_LINEAR_BUCKETS=0`
turns the padding off, for measuring it.

`MTCLI_FAST_LINEAR=0` turns it off. Without the oneDNN ops, off the CPU, or for other dtypes the
model is returned unchanged.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

ENV = "MTCLI_FAST_LINEAR"
BUCKETS_ENV = "MTCLI_LINEAR_BUCKETS"  # 0: every row count is its own GEMM shape (for measuring)
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


def bf16_supported() -> bool:
    """True when oneDNN can run bfloat16 GEMMs in hardware here (AVX512-BF16 or AMX)."""
    try:
        return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """False when $MTCLI_FAST_LINEAR is 0/false/no/off."""
    return _env_on(ENV)


def bucket_rows(rows: int) -> int:
    """The row count a packed GEMM runs at: `rows` up to 16, above that rounded up to a multiple of
    an eighth of the power of two below it (at most 12.5 % of padding rows).

    torch's ideep and oneDNN each cache a primitive, with its buffers, per input shape (1,024 of
    each by default, `LRU_CACHE_CAPACITY` and `ONEDNN_PRIMITIVE_CACHE_CAPACITY`). A server's
    batches have ever other row counts, so without buckets those caches fill with a new entry per
    row count, hundreds of MB (docs/BENCHMARKS.md); with them a linear sees at most 8 shapes per
    doubling of the rows, which a warm-up fills."""
    if rows <= 16:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


class PackedLinear(nn.Module):
    """`y = x W^T + b` through oneDNN with W reordered once (inference only, CPU).

    `dtype` is the GEMM's (float32, or bfloat16 with float32 accumulation); the output is float32
    unless `keep_dtype`. `relu` applies max(0, y) inside the GEMM.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, batch_hint: int = BATCH_HINT,
                 dtype: torch.dtype = torch.float32, relu: bool = False, keep_dtype: bool = False):  # fmt: skip
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype, self.relu, self.keep_dtype = dtype, relu, keep_dtype
        self.buckets = _env_on(BUCKETS_ENV)
        # Plain attributes, not buffers: an opaque oneDNN tensor cannot be moved, copied or saved.
        w = weight.detach().to(dtype).contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
        self.bias = None if bias is None else bias.detach().float().clone()  # oneDNN adds it in float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        padded = bucket_rows(rows) if self.buckets else rows
        x2 = x.reshape(rows, self.in_features).to(self.dtype)
        if padded != rows:
            x2 = F.pad(x2, (0, 0, 0, padded - rows))
        y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias,
                                               "relu" if self.relu else "none", [], "")  # fmt: skip
        y = y[:rows].reshape(*x.shape[:-1], self.out_features)
        return y if self.keep_dtype else y.float()

    def __deepcopy__(self, memo) -> PackedLinear:
        # An opaque oneDNN tensor has no storage to copy: repack from its dense form.
        return PackedLinear(self.packed.to_dense(), copy.deepcopy(self.bias, memo), dtype=self.dtype,
                            relu=self.relu, keep_dtype=self.keep_dtype)  # fmt: skip

    def extra_repr(self) -> str:
        bias = self.bias is not None
        dtype = str(self.dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, dtype={dtype}" + (
            ", relu" if self.relu else "")


def _packable(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _packed_replacements(model: nn.Module, dtype: torch.dtype) -> dict[str, nn.Module]:
    """Qualified name -> replacement: a packed copy of every plain `nn.Linear` and of a tied output
    projection; a ReLU feed-forward's first linear fuses the ReLU (its activation becomes Identity)."""
    from mtcli.model.layers import FeedForward

    # Exact type: quantized linears and other subclasses are left alone.
    out: dict[str, nn.Module] = {
        name: PackedLinear(m.weight, m.bias, dtype=dtype) for name, m in model.named_modules() if type(m) is nn.Linear
    }
    for name, ff in model.named_modules():
        if isinstance(ff, FeedForward) and ff.activation is F.relu and type(ff.linear1) is nn.Linear:
            prefix = f"{name}." if name else ""
            out[prefix + "linear1"] = PackedLinear(ff.linear1.weight, ff.linear1.bias, dtype=dtype, relu=True,
                                                   keep_dtype=True)  # fmt: skip
            out[prefix + "activation"] = nn.Identity()
    if getattr(model, "output_proj", False) is None and hasattr(model, "tgt_embed"):
        # tied: F.linear on the embedding
        out["output_proj"] = PackedLinear(model.tgt_embed.tokens.weight, dtype=dtype)
    return out


def pack_linears(model: nn.Module, inplace: bool = False, bf16: bool = False) -> nn.Module:
    """`model` (or a copy) with every linear on packed weights; `model` unchanged when not possible.

    With tied embeddings (`output_proj is None`) the output projection becomes a packed copy of the
    target embedding matrix and the embedding lookup keeps the original. The result is for
    inference only: the packed modules hold no parameters (no training, no state_dict of them).
    """
    if not (enabled() and available() and _packable(model)) or (bf16 and not bf16_supported()):
        return model
    try:
        swaps = _packed_replacements(model, torch.bfloat16 if bf16 else torch.float32)
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


# ----------------------------------------------------------------------------- int8
# Optional int8 dynamic quantization for CPU inference.
#
# Every `nn.Linear` (attention and feed-forward projections) and the output projection become
# int8-weight linears (one scale per output row, like CTranslate2's int8) whose activations are
# quantized on the fly (`torch.ao.quantization.quantize_dynamic`). With tied embeddings the output
# projection is `F.linear` on the embedding matrix, which quantize_dynamic cannot see; it is given
# its own `nn.Linear` sharing that matrix first, so it is quantized too while the embedding lookup
# stays in float32. CPU only; search (`beam_search`, `Translator`) runs on the result unchanged.


def quantize_for_inference(model: nn.Module) -> nn.Module:
    """An int8 dynamically-quantized copy of a `Transformer` for CPU search (the input is untouched)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model).cpu().eval()
    if getattr(model, "output_proj", True) is None:  # tied: make the projection a real Linear
        weight = model.tgt_embed.tokens.weight
        proj = nn.Linear(weight.size(1), weight.size(0), bias=False)
        proj.weight = weight
        model.output_proj = proj
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
