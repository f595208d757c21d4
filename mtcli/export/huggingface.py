"""`mtcli export --to huggingface`: the Transformers model that computes the same function.

post-LN models become `MarianMTModel` and pre-LN models `PegasusForConditionalGeneration` (pre-LN
layers with a final LayerNorm on each stack, the same sinusoid formula and embedding scale; M2M100's
sinusoid uses other frequencies and offsets its positions). The weights are mapped by
`hf_names` (with its exact channel permutation); DeepNorm's constant alpha is folded into each
sublayer's output projection (LN(alpha*x + F(x)) = LN(x + F(x)/alpha) up to LayerNorm's epsilon).
The tokenizer is Marian's (`source.spm`, `target.spm`, `vocab.json`), which `AutoTokenizer` loads
and which numbers pieces as mtcli does; `generation_config.json` carries the decode settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mtcli.errors import MtcliError
from mtcli.export.command import Source, require
from mtcli.export.hf_names import entries, perm, to_hf

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "swish"}  # Transformers' exact equivalents
HF_EPS = 1e-5  # nn.LayerNorm's default, which Marian and Pegasus layers use


def check_installed() -> None:
    require("transformers")


def check_supported(source: Source, quantization: str | None) -> None:
    """Refuse in one line what Marian/Pegasus cannot compute."""
    m, vocab_joint = source.cfg.model, source.meta.get("joint", True)
    reasons = {
        "model.norm_type=rmsnorm": (m.norm_type == "rmsnorm", "no Hugging Face encoder-decoder class computes "
                                    "RMSNorm (Marian and Pegasus use LayerNorm)"),
        "model.norm=none": (m.norm == "none", "no Hugging Face class has layers without normalization"),
        "model.residual=false": (not m.residual, "no Hugging Face class has layers without residual connections"),
        "model.positions=learned": (m.positions == "learned", "Marian and Pegasus compute fixed sinusoidal positions"),
        f"model.norm_eps={m.norm_eps}": (m.norm_eps != HF_EPS, f"Marian and Pegasus LayerNorms use eps {HF_EPS}"),
        f"model.d_model={m.d_model}": (m.d_model % 2 == 1, "the sinusoid channel permutation needs an even d_model"),
        "model.norm=pre with separate embeddings": (
            m.norm == "pre" and not (m.tie_embeddings and vocab_joint),
            "Pegasus, the pre-LN class, shares one embedding between encoder and decoder"),
        "model.norm=pre with model.output_bias": (m.norm == "pre" and m.output_bias, "kept for Marian only"),
        f"--quantization {quantization}": (quantization is not None and quantization.startswith("int8"),
                                           "a Hugging Face export holds float weights: use float16 or bfloat16"),
    }  # fmt: skip
    for key, (bad, why) in reasons.items():
        if bad:
            raise MtcliError(f"{source.path}: {key}: {why}")


def hf_config(source: Source):
    """The MarianConfig (post-LN, DeepNorm) or PegasusConfig (pre-LN) of this bundle."""
    from transformers import MarianConfig, PegasusConfig

    m, tok = source.cfg.model, source.tok
    shared = m.tie_embeddings and source.meta.get("joint", True)
    common = dict(
        vocab_size=tok.src_vocab_size, d_model=m.d_model, encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers, encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff, activation_function=ACTIVATIONS[m.activation],
        dropout=m.dropout, attention_dropout=m.attention_dropout, activation_dropout=m.dropout,
        max_position_embeddings=m.max_positions, scale_embedding=True, tie_word_embeddings=m.tie_embeddings,
        pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
        decoder_start_token_id=tok.bos_id, forced_eos_token_id=None, is_encoder_decoder=True,
    )  # fmt: skip
    if m.norm == "pre":
        return PegasusConfig(**common)
    return MarianConfig(**common, decoder_vocab_size=tok.tgt_vocab_size, share_encoder_decoder_embeddings=shared)


def hf_model(source: Source, mutate=None):
    """The Transformers model with the bundle's weights (`mutate(name, tensor)`: tests inject mistakes)."""
    from transformers import MarianMTModel, PegasusForConditionalGeneration

    m = source.cfg.model
    config = hf_config(source)
    cls = PegasusForConditionalGeneration if m.norm == "pre" else MarianMTModel
    model = cls(config).eval()
    ours = dict(source.model.state_dict())
    folded = _fold_deepnorm(source) if m.norm == "deepnorm" else {}
    shared = m.tie_embeddings and source.meta.get("joint", True)
    theirs = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    p = perm(m.d_model)
    with torch.no_grad():
        for name, t in theirs.items():
            if "embed_positions" not in name:
                t.fill_(float("nan"))
        for e in entries(m.encoder_layers, m.decoder_layers, m.norm == "pre", shared, m.tie_embeddings, m.output_bias):
            if e.hf not in theirs:
                raise MtcliError(f"{source.path}: no {e.hf} in {cls.__name__} (an unexpected Transformers version?)")
            t = to_hf(folded.get(e.mtcli, ours[e.mtcli]).float(), e.dims, p)
            if mutate is not None:
                t = mutate(e.hf, t)
            theirs[e.hf].copy_(t.reshape(theirs[e.hf].shape))
        if "final_logits_bias" in theirs and not m.output_bias:
            theirs["final_logits_bias"].zero_()
        unset = [n for n, t in theirs.items() if t.is_floating_point() and torch.isnan(t).any()]
    if unset:
        raise MtcliError(f"{source.path}: {cls.__name__} weights left unmapped: {', '.join(unset[:3])}")
    return model


def _fold_deepnorm(source: Source) -> dict[str, torch.Tensor]:
    """Each sublayer's output projection divided by its stack's alpha (see the module docstring)."""
    from mtcli.model.residual import deepnorm_constants

    m = source.cfg.model
    c = deepnorm_constants(m.encoder_layers, m.decoder_layers)
    out = {}
    for name, t in source.model.state_dict().items():
        if name.split(".")[0] in ("encoder", "decoder") and (".out_proj." in name or ".ff.linear2." in name):
            out[name] = t / c[f"{name.split('.')[0]}_alpha"]
    return out


def write(source: Source, out: Path, quantization: str | None) -> None:
    """config.json, model.safetensors, tokenizer and generation_config.json into `out`."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
    model = hf_model(source)
    if quantization in ("float16", "bfloat16"):
        model = model.to(getattr(torch, quantization))
    model.generation_config = generation_config(source)
    model.save_pretrained(str(out), safe_serialization=True)
    write_tokenizer(source, out)


def generation_config(source: Source):
    """Beam size, length penalty and lengths of the bundle's `decode` section.

    Transformers' `length_penalty` divides the log-probability by length**penalty, not by GNMT's
    ((5 + length) / 6)**penalty as mtcli does: beam results may differ on close calls.
    """
    from transformers import GenerationConfig

    d, tok, m = source.cfg.decode, source.tok, source.cfg.model
    beam = {"length_penalty": d.length_penalty, "early_stopping": True} if d.beam_size > 1 else {}
    return GenerationConfig(
        num_beams=d.beam_size, max_length=m.max_positions, min_new_tokens=d.min_len,
        decoder_start_token_id=tok.bos_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id, suppress_tokens=sorted({tok.pad_id, tok.bos_id}),
        **beam,
    )  # fmt: skip


def pieces(tok, side: str) -> list[str]:
    """The pieces of one side's vocabulary in model-id order."""
    if tok.id_map is not None:
        return list(tok.id_map[f"{side}_pieces"])
    sp = tok.src if side == "src" else tok.tgt
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def write_tokenizer(source: Source, out: Path) -> None:
    """Marian's tokenizer files: source.spm, target.spm, vocab.json (and target_vocab.json)."""
    from transformers import MarianTokenizer

    path, tok = source.path, source.tok
    joint_file = path / "spm.model"
    src_spm = joint_file if joint_file.exists() else path / "spm.src.model"
    tgt_spm = joint_file if joint_file.exists() else path / "spm.tgt.model"
    shutil.copyfile(src_spm, out / "source.spm")
    shutil.copyfile(tgt_spm, out / "target.spm")
    separate = not source.meta.get("joint", True)
    (out / "vocab.json").write_text(json.dumps(_ids(pieces(tok, "src")), ensure_ascii=False), encoding="utf-8")
    if separate:
        (out / "target_vocab.json").write_text(json.dumps(_ids(pieces(tok, "tgt")), ensure_ascii=False),
                                               encoding="utf-8")  # fmt: skip
    data = source.cfg.data
    hf_tok = MarianTokenizer(
        str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"),
        target_vocab_file=str(out / "target_vocab.json") if separate else None, separate_vocabs=separate,
        source_lang=data.src_lang, target_lang=data.tgt_lang, model_max_length=source.cfg.model.max_positions,
    )  # fmt: skip
    hf_tok.save_pretrained(str(out))


def _ids(piece_list: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, piece in enumerate(piece_list):
        ids.setdefault(piece, i)
    return ids
