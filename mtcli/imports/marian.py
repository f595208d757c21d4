"""`mtcli import huggingface DIR -o BUNDLE`: a Marian (OPUS-MT) model saved by Transformers' `save_pretrained`
as an mtcli bundle.

What OPUS-MT uses maps onto mtcli's model as it is: post-LN layers, swish = `activation: silu`, the
embedding scale, `final_logits_bias` = `model.output_bias`, tied (or separate) embeddings. Marian's
sinusoid layout is mtcli's up to a fixed channel permutation (`mtcli.export.hf_names`), exact since
LayerNorm ignores channel order. Marian numbers pieces by `vocab.json`, not by SentencePiece ids,
with the pad token last and the decoder starting from pad: the bundle keeps that numbering in
`spm.ids.json`, which `Tokenizer` reads. Nothing here needs the hub: DIR is a local folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.export.hf_names import entries, from_hf, perm
from mtcli.files import new_dir

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}
REQUIRED = ("config.json", "source.spm", "target.spm", "vocab.json")
# MarianConfig keys (older exports carry them) that ask for layers mtcli does not have.
UNSUPPORTED = {"normalize_before": True, "add_final_layer_norm": True, "normalize_embedding": True,
               "static_position_embeddings": False, "scale_embedding": False, "add_bias_logits": True}  # fmt: skip


def read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MtcliError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise MtcliError(f"{path}: expected a JSON object")
    return raw


def check_dir(directory: Path) -> dict:
    """The config.json of a Marian model folder, or a one-line error naming the file or key."""
    if not directory.is_dir():
        raise MtcliError(f"{directory}: not a folder (give the folder `save_pretrained` wrote)")
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise MtcliError(f"{directory / name}: missing; a Marian model folder holds {', '.join(REQUIRED)} "
                             "and model.safetensors or pytorch_model.bin")  # fmt: skip
    config = read_json(directory / "config.json")
    where = directory / "config.json"
    if config.get("model_type") != "marian":
        raise MtcliError(f"{where}: model_type={config.get('model_type')!r}; mtcli imports Marian (OPUS-MT) models")
    act = config.get("activation_function", "swish")
    if act not in ACTIVATIONS:
        raise MtcliError(f"{where}: activation_function={act!r}; mtcli computes relu, gelu and swish (silu)")
    for key, bad in UNSUPPORTED.items():
        if key in config and config[key] == bad:
            raise MtcliError(f"{where}: {key}={json.dumps(bad)} is not supported (mtcli's Marian layers do not have it)")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config.get(enc) != config.get(dec):
            raise MtcliError(f"{where}: {enc}={config.get(enc)} and {dec}={config.get(dec)} differ; mtcli's "
                             "encoder and decoder share one shape")  # fmt: skip
    if config.get("d_model", 0) % 2:
        raise MtcliError(f"{where}: d_model={config.get('d_model')} is odd (the sinusoid layout needs an even one)")
    return config


def load_weights(directory: Path) -> dict:
    """The state dict from model.safetensors, else pytorch_model.bin (loaded with weights_only=True)."""
    import torch

    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if pt.is_file():
            return torch.load(str(pt), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MtcliError(f"{st if st.is_file() else pt}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    raise MtcliError(f"{directory}: no model.safetensors or pytorch_model.bin")


def id_map(directory: Path, config: dict, separate: bool) -> dict:
    """spm.ids.json: each side's pieces in model-id order and the special ids."""
    def pieces(name: str, size: int) -> list[str]:
        vocab = read_json(directory / name)
        out = [f"<unused-{i}>" for i in range(size)]
        for piece, i in vocab.items():
            if not isinstance(i, int) or not 0 <= i < size:
                raise MtcliError(f"{directory / name}: {piece!r} has id {i!r}, outside the model's {size} embeddings")
            out[i] = piece
        return out

    src_size = config["vocab_size"]
    src = pieces("vocab.json", src_size)
    tgt = pieces("target_vocab.json", config.get("decoder_vocab_size") or src_size) if separate else src
    if "<unk>" not in src:
        raise MtcliError(f"{directory / 'vocab.json'}: no <unk> piece")
    pad = config.get("pad_token_id", src_size - 1)
    start = config.get("decoder_start_token_id", pad)
    return {"src_pieces": src, "tgt_pieces": tgt, "pad_id": pad, "unk_id": src.index("<unk>"),
            "bos_id": start, "eos_id": config.get("eos_token_id", 0)}  # fmt: skip


def languages(directory: Path) -> tuple[str, str]:
    """Source and target language: tokenizer_config.json, else an `opus-mt-xx-yy` folder name."""
    tok_cfg = directory / "tokenizer_config.json"
    raw = read_json(tok_cfg) if tok_cfg.is_file() else {}
    name = re.search(r"opus-mt-([A-Za-z_]+)-([A-Za-z_]+)", directory.resolve().name)
    src = raw.get("source_lang") or (name.group(1) if name else "src")
    tgt = raw.get("target_lang") or (name.group(2) if name else "tgt")
    return str(src), str(tgt)


def decode_settings(directory: Path) -> dict:
    """The decode section: an mtcli export's own (its marker file), else the beam of generation_config.json."""
    from mtcli.export.command import export_marker

    marker = export_marker(directory)
    if marker is not None and isinstance(marker.get("decode"), dict):
        return marker["decode"]
    gen = directory / "generation_config.json"
    beam = read_json(gen).get("num_beams") if gen.is_file() else None
    return {"beam_size": max(1, int(beam))} if isinstance(beam, int) else {}


def mtcli_config(directory: Path, config: dict, separate: bool, decode: dict, output_bias: bool):
    """The mtcli Config of the imported model (post-LN Marian layers with an output bias)."""
    from mtcli.config import Config

    src, tgt = languages(directory)
    max_pos = config.get("max_position_embeddings", 512)
    model = {
        "d_model": config["d_model"], "n_heads": config["encoder_attention_heads"], "d_ff": config["encoder_ffn_dim"],
        "encoder_layers": config["encoder_layers"], "decoder_layers": config["decoder_layers"],
        "dropout": config.get("dropout", 0.1), "attention_dropout": config.get("attention_dropout", 0.0),
        "activation": ACTIVATIONS[config.get("activation_function", "swish")], "norm": "post",
        "norm_type": "layernorm", "norm_eps": 1e-5, "positions": "sinusoidal", "max_positions": max_pos,
        "tie_embeddings": config.get("tie_word_embeddings", True), "output_bias": output_bias,
    }  # fmt: skip
    data = {"src_lang": src, "tgt_lang": tgt, "train": {"type": "tsv", "path": f"{directory.resolve()} (imported)"},
            "filters": {"max_tokens": min(250, max_pos - 1)}}  # fmt: skip
    return Config.model_validate({"name": directory.resolve().name, "data": data, "model": model,
                                  "tokenizer": {"joint": not separate}, "decode": decode})  # fmt: skip


def mtcli_model(cfg, vocab, state: dict, where: Path):
    """An mtcli Transformer holding the Marian weights (every parameter set, or an error)."""
    import torch

    from mtcli.model.transformer import build_model

    m = cfg.model
    net = build_model(m, vocab)
    ours = dict(net.named_parameters(remove_duplicate=False))
    sources: dict[str, list] = {}
    for e in entries(m.encoder_layers, m.decoder_layers, False, vocab.joint and m.tie_embeddings,
                     m.tie_embeddings, m.output_bias):  # fmt: skip
        sources.setdefault(e.mtcli, []).append(e)
    p = perm(m.d_model)
    with torch.no_grad():
        for name, param in ours.items():
            found = [e for e in sources.get(name, []) if _lookup(state, e.hf) is not None]
            if not found:
                raise MtcliError(f"{where}: no {sources[name][0].hf if name in sources else name} in the weights")
            t = from_hf(_lookup(state, found[0].hf).float(), found[0].dims, p)
            if t.numel() != param.numel():
                raise MtcliError(f"{where}: {found[0].hf} has shape {tuple(t.shape)}; config.json implies "
                                 f"{tuple(param.shape)}")  # fmt: skip
            param.copy_(t.reshape(param.shape))
    return net


def _lookup(state: dict, name: str):
    """A tensor by its MarianMTModel name, also as MarianModel saves it (no `model.` prefix) or under
    `model.shared` (a tied embedding saved once)."""
    for candidate in (name, name.removeprefix("model."), "model.shared.weight" if "embed_tokens" in name else None):
        if candidate is not None and candidate in state:
            return state[candidate]
    return None


def run_import(directory: Path, output: Path) -> Path:
    """The `mtcli import huggingface` command: the bundle written."""
    from mtcli import __version__
    from mtcli.data.manifest import Vocab
    from mtcli.inference.bundle import check_target, export_bundle
    from mtcli.model.transformer import spec_digest

    directory, output = Path(directory), Path(output)
    config = check_dir(directory)
    check_target(output)
    # Separate embeddings may still number one vocabulary (no target_vocab.json): both sides read vocab.json.
    separate = not config.get("share_encoder_decoder_embeddings", True)
    ids = id_map(directory, config, separate and (directory / "target_vocab.json").is_file())
    if len(ids["tgt_pieces"]) != (config.get("decoder_vocab_size") or config["vocab_size"]):
        raise MtcliError(f"{directory / 'config.json'}: decoder_vocab_size={config.get('decoder_vocab_size')} "
                         f"but the target vocabulary has {len(ids['tgt_pieces'])} pieces")  # fmt: skip
    state = load_weights(directory)
    bias = _lookup(state, "final_logits_bias")  # all zeros (an mtcli export without one): left out
    cfg = mtcli_config(directory, config, separate, decode_settings(directory), bool(bias is not None and bias.any()))
    vocab = Vocab(len(ids["src_pieces"]), len(ids["tgt_pieces"]), not separate, ids["pad_id"])
    net = mtcli_model(cfg, vocab, state, directory)
    staging = new_dir(output.parent / f".{output.name}-tokenizer")
    try:
        shutil.copyfile(directory / "source.spm", staging / "spm.src.model")
        shutil.copyfile(directory / "target.spm", staging / "spm.tgt.model")
        (staging / "spm.ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
        meta = {**vocab.saved(), "pad_id": ids["pad_id"], "bos_id": ids["bos_id"], "eos_id": ids["eos_id"],
                "unk_id": ids["unk_id"], "mtcli": __version__, "imported_from": str(directory.resolve()),
                "src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang}  # fmt: skip
        export_bundle(net, cfg.model_dump(mode="json"), staging, output, meta, spec_digest(cfg.model, vocab))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
