"""`mtcli export BUNDLE --to ctranslate2`: the bundle as a CTranslate2 model, built with
CTranslate2's own spec API (`TransformerSpec.from_config`, filled like its `opennmt_py.py` and
`fairseq.py` converters: one short function per component, reading mtcli's parameter names).

What maps how (CTranslate2 4.x):

- `model.norm: post` and `deepnorm` are `pre_norm=False` (LN(x + F(x)) per sublayer, no final
  norm); `pre` is `pre_norm=True` with the final stack norms. DeepNorm's LN(alpha*x + F(x)) equals
  LN(x + F(x)/alpha) up to the norm's epsilon (LN(alpha*y, eps) = LN(y, eps/alpha^2)), so each
  sublayer's output projection (attention `out_proj`, feed-forward `linear2`), weight and bias,
  is divided by alpha; the epsilon difference is ~1e-6 relative and the tests bound its effect.
- `model.norm_type: rmsnorm` is `rms_norm=True`; `model.norm_eps` goes into the model config as
  `layer_norm_epsilon` (CTranslate2's defaults, 1e-5 LayerNorm and 1e-6 RMSNorm, are not used).
- Activations: relu -> RELU, gelu -> GELU (CTranslate2's exact erf GELU, not GELUTanh), silu ->
  SWISH (x * sigmoid(x)).
- Embeddings are scaled by sqrt(d_model) (`scale_embeddings`), then the position table is added;
  both tables are written out explicitly (mtcli's sinusoid interleaves sin/cos on even/odd
  channels from position 0, CTranslate2's built-in one concatenates them from position 1).
- Tied embeddings: the same array for the source and target embeddings and/or the output
  projection (CTranslate2 stores it once). `model.output_bias` is the projection's bias.
- The source gets EOS (`add_source_eos`) and the decoder starts from `<s>`, as in mtcli.

Refused in one line: `model.norm: none` and `model.residual: false` (CTranslate2 always wraps each
sublayer in a residual with a norm), and tokenizers with an id map (imported vocabularies).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.export.command import require
from mtcli.inference.ct2 import INFO_FILE

ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "silu": "SWISH"}  # names in ctranslate2's Activation
# Deliberate mistakes for the tests (each must make the exactness check fail); never used otherwise.
MISTAKES = ("transposed_projection", "dropped_bias", "blocked_sinusoid", "unfolded_deepnorm")


def check_installed() -> None:
    """ctranslate2 importable, or one line naming the extra."""
    require("ctranslate2")


def check_supported(source, quantization: str | None = None) -> None:
    """Refuse, naming the key, what CTranslate2's Transformer cannot compute."""
    m = source.cfg.model
    if getattr(source.tok, "id_map", None) is not None:
        raise MtcliError("imported vocabularies are not exported to CTranslate2 yet")
    if m.norm == "none":
        raise MtcliError("model.norm=none: CTranslate2 normalizes every sublayer (post or pre); "
                         "a model without norms cannot be exported to it")  # fmt: skip
    if not m.residual:
        raise MtcliError("model.residual=false: CTranslate2 always adds the residual; "
                         "a model without it cannot be exported to it")  # fmt: skip
    if m.activation not in ACTIVATIONS:
        raise MtcliError(f"model.activation={m.activation}: CTranslate2 export supports {', '.join(ACTIVATIONS)}")


def write(source, out_dir: Path, quantization: str | None = None, *, mistake: str | None = None) -> None:
    """Convert the bundle into `out_dir` (a fresh folder) and add the tokenizer and decode settings."""
    from ctranslate2.converters import Converter

    if mistake is not None and mistake not in MISTAKES:
        raise ValueError(f"unknown mistake {mistake!r}")

    class MtcliConverter(Converter):
        def _load(self):
            return build_spec(source, mistake)

    # `convert(force=True)` deletes the folder and makes it anew, so our files come after it.
    MtcliConverter().convert(str(out_dir), quantization=quantization, force=True)
    tok_files = ["spm.model"] if source.tok.joint else ["spm.src.model", "spm.tgt.model"]
    for name in tok_files:
        shutil.copy2(Path(source.path) / name, Path(out_dir) / name)
    info = {
        "format": 1,
        "config": source.cfg.model_dump(mode="json"),
        "max_positions": source.cfg.model.max_positions,
        "src_lang": source.meta.get("src_lang"),
        "tgt_lang": source.meta.get("tgt_lang"),
        "quantization": quantization,
        "tokenizer": tok_files,
    }
    (Path(out_dir) / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- the spec


def model_variables(model) -> dict:
    """Every parameter and buffer (the sinusoid tables) as float32 numpy arrays, by mtcli's names;
    shared tensors appear under each of their names."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: t.detach().cpu().float().numpy() for name, t in named}


def pieces(processor) -> list[str]:
    """A SentencePiece model's pieces in id order: the vocabulary CTranslate2 maps tokens with."""
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def build_spec(source, mistake: str | None = None):
    """The filled `TransformerSpec` of a loaded bundle (see the module docstring)."""
    from ctranslate2.specs import common_spec, transformer_spec

    from mtcli.model.residual import deepnorm_constants

    m = source.cfg.model
    spec = transformer_spec.TransformerSpec.from_config(
        (m.encoder_layers, m.decoder_layers), m.n_heads, pre_norm=m.norm == "pre",
        activation=getattr(common_spec.Activation, ACTIVATIONS[m.activation]), rms_norm=m.norm_type == "rmsnorm",
    )  # fmt: skip
    alpha = {"encoder": 1.0, "decoder": 1.0}
    if m.norm == "deepnorm" and mistake != "unfolded_deepnorm":
        c = deepnorm_constants(m.encoder_layers, m.decoder_layers)
        alpha = {"encoder": c["encoder_alpha"], "decoder": c["decoder_alpha"]}
    variables = model_variables(source.model)
    set_encoder(spec.encoder, variables, alpha["encoder"])
    set_decoder(spec.decoder, variables, alpha["decoder"], tied=m.tie_embeddings)
    set_config(spec, source.tok, m.norm_eps)
    src, tgt = pieces(source.tok.src), pieces(source.tok.tgt)
    spec.register_source_vocabulary(src)
    spec.register_target_vocabulary(tgt)
    if mistake is not None:
        inject(spec, mistake)
    return spec


def set_config(spec, tok, eps: float) -> None:
    """Special tokens as mtcli uses them: EOS after the source, `<s>` starts the decoder."""
    piece = tok.tgt.id_to_piece
    spec.config.unk_token = piece(tok.unk_id)
    spec.config.bos_token = piece(tok.bos_id)
    spec.config.eos_token = piece(tok.eos_id)
    spec.config.decoder_start_token = piece(tok.bos_id)
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = float(eps)


def set_encoder(spec, variables: dict, alpha: float) -> None:
    set_input_layers(spec, variables, "src_embed")
    if hasattr(spec, "layer_norm"):  # pre-norm only
        set_norm(spec.layer_norm, variables, "encoder_norm")
    for i, layer in enumerate(spec.layer):
        scope = f"encoder.{i}"
        set_attention(layer.self_attention, variables, f"{scope}.self_attn", alpha, self_attention=True)
        set_norm(layer.self_attention.layer_norm, variables, f"{scope}.self_attn_res.norm")
        set_ffn(layer.ffn, variables, scope, alpha)


def set_decoder(spec, variables: dict, alpha: float, tied: bool) -> None:
    set_input_layers(spec, variables, "tgt_embed")
    if hasattr(spec, "layer_norm"):
        set_norm(spec.layer_norm, variables, "decoder_norm")
    for i, layer in enumerate(spec.layer):
        scope = f"decoder.{i}"
        set_attention(layer.self_attention, variables, f"{scope}.self_attn", alpha, self_attention=True)
        set_norm(layer.self_attention.layer_norm, variables, f"{scope}.self_attn_res.norm")
        set_attention(layer.attention, variables, f"{scope}.cross_attn", alpha)
        set_norm(layer.attention.layer_norm, variables, f"{scope}.cross_attn_res.norm")
        set_ffn(layer.ffn, variables, scope, alpha)
    spec.projection.weight = variables["tgt_embed.tokens.weight" if tied else "output_proj.weight"]
    if "output_bias" in variables:
        spec.projection.bias = variables["output_bias"]


def set_input_layers(spec, variables: dict, scope: str) -> None:
    """Token embedding times sqrt(d_model), plus the explicit position table (P, D)."""
    weight = variables[f"{scope}.tokens.weight"]
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = weight
    spec.scale_embeddings = float(weight.shape[1]) ** 0.5
    table = variables.get(f"{scope}.positions.weight")  # learned, else the sinusoid buffer
    spec.position_encodings.encodings = variables[f"{scope}.table"] if table is None else table


def set_attention(spec, variables: dict, scope: str, alpha: float, self_attention: bool = False) -> None:
    """q/k/v fused as CTranslate2 wants them (self: one qkv linear; cross: q, then k+v)."""
    from ctranslate2.converters import utils
    from ctranslate2.specs import common_spec

    if self_attention:
        split = [common_spec.LinearSpec() for _ in range(3)]
        for part, name in zip(split, ("q_proj", "k_proj", "v_proj")):
            set_linear(part, variables, f"{scope}.{name}")
        utils.fuse_linear(spec.linear[0], split)
    else:
        set_linear(spec.linear[0], variables, f"{scope}.q_proj")
        split = [common_spec.LinearSpec() for _ in range(2)]
        set_linear(split[0], variables, f"{scope}.k_proj")
        set_linear(split[1], variables, f"{scope}.v_proj")
        utils.fuse_linear(spec.linear[1], split)
    set_linear(spec.linear[-1], variables, f"{scope}.out_proj", alpha)


def set_ffn(spec, variables: dict, scope: str, alpha: float) -> None:
    set_norm(spec.layer_norm, variables, f"{scope}.ff_res.norm")
    set_linear(spec.linear_0, variables, f"{scope}.ff.linear1")
    set_linear(spec.linear_1, variables, f"{scope}.ff.linear2", alpha)


def set_linear(spec, variables: dict, scope: str, divide: float = 1.0) -> None:
    """weight (out, in) as nn.Linear stores it, and the bias; divided by `divide` (DeepNorm's alpha)."""
    spec.weight = variables[f"{scope}.weight"] / divide if divide != 1.0 else variables[f"{scope}.weight"]
    bias = variables.get(f"{scope}.bias")
    if bias is not None:
        spec.bias = bias / divide if divide != 1.0 else bias


def set_norm(spec, variables: dict, scope: str) -> None:
    """LayerNorm gamma and beta, or RMSNorm's gamma alone."""
    spec.gamma = variables[f"{scope}.weight"]
    if hasattr(spec, "beta"):
        spec.beta = variables[f"{scope}.bias"]


# ----------------------------------------------------------------------------- test hooks


def inject(spec, mistake: str) -> None:
    """One deliberate mapping error (tests only), applied to the filled spec."""
    import numpy as np
    from ctranslate2.specs import model_spec

    if mistake == "transposed_projection":
        out = spec.encoder.layer[0].self_attention.linear[-1]
        out.weight = np.ascontiguousarray(out.weight.T)
    elif mistake == "dropped_bias":
        spec.decoder.layer[0].ffn.linear_0.bias = model_spec.OPTIONAL
    elif mistake == "blocked_sinusoid":
        for stack in (spec.encoder, spec.decoder):
            table = stack.position_encodings.encodings
            # CTranslate2's layout: every sin channel first, then every cos channel.
            stack.position_encodings.encodings = np.concatenate([table[:, 0::2], table[:, 1::2]], axis=1)
