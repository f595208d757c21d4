"""Optional int8 dynamic quantization for CPU inference.

Every `nn.Linear` (attention and feed-forward projections) and the output projection become
int8-weight linears (one scale per output row, like CTranslate2's int8) whose activations are
quantized on the fly (`torch.ao.quantization.quantize_dynamic`). With tied embeddings the output
projection is `F.linear` on the embedding matrix, which quantize_dynamic cannot see; it is given
its own `nn.Linear` sharing that matrix first, so it is quantized too while the embedding lookup
stays in float32. CPU only; search (`beam_search`, `Translator`) runs on the result unchanged.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn


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
