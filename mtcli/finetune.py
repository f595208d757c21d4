"""Fine-tuning: the initial model of `train.init_from`, whose shape and tokenizer a run inherits.

`train.init_from` names a bundle (a folder with model.safetensors) or a training checkpoint
(`.pt`, whose tokenizer is its run's `data/`). The run takes the initial model's `model` and
`tokenizer` sections: keys the config leaves out are filled from it, keys it sets must agree
(dropout may differ), so a fine-tune can never rebuild the vocabulary or change a shape by
accident. `prepare` copies the initial SentencePiece model(s) instead of training new ones and
records where they came from; `train` starts from the initial weights with a fresh optimizer,
schedule, data position and best score. Its own checkpoints then resume it like any run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.safe_yaml import load_yaml

FREE_KEYS = {"dropout", "attention_dropout"}  # regularization: a fine-tune may change them


@dataclass(frozen=True)
class InitialModel:
    """Where the weights, config and tokenizer files of the initial model are."""

    path: Path  # the bundle folder or the checkpoint file
    is_bundle: bool
    config: dict  # its resolved config, as saved
    vocab: dict  # Vocab.saved() form
    spm_files: tuple[Path, ...]  # its SentencePiece model(s)


def initial_model(path: str | Path) -> InitialModel:
    """Read what a fine-tune needs from a bundle or a checkpoint; a clear error for anything else."""
    path = Path(path)
    where = f"train.init_from {path}"
    if path.is_dir():
        return _from_bundle(path, where)
    if path.is_file():
        return _from_checkpoint(path, where)
    raise MtcliError(f"{where}: no such bundle or checkpoint")


def _from_bundle(path: Path, where: str) -> InitialModel:
    missing = [n for n in ("model.safetensors", "config.yaml", "metadata.json") if not (path / n).is_file()]
    if missing:
        raise MtcliError(f"{where}: not a model bundle (missing {', '.join(missing)})")
    config_file = path / "config.yaml"
    config = load_yaml(config_file.read_text(encoding="utf-8"), str(config_file))
    try:
        meta = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
        vocab = {k: meta[k] for k in ("src_vocab", "tgt_vocab", "joint")}
    except (ValueError, KeyError) as exc:
        raise MtcliError(f"{path / 'metadata.json'}: damaged bundle metadata ({exc})") from None
    return InitialModel(path, True, config, vocab, _spm_files(path, where))


def _from_checkpoint(path: Path, where: str) -> InitialModel:
    from mtcli.training.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    if not {"model", "config", "vocab"} <= set(ckpt):
        raise MtcliError(f"{where}: not an mtcli training checkpoint")
    data_dir = path.parent.parent / "data"  # run_dir/checkpoints/step_N.pt -> run_dir/data
    return InitialModel(path, False, ckpt["config"], ckpt["vocab"], _spm_files(data_dir, where))


def _spm_files(folder: Path, where: str) -> tuple[Path, ...]:
    files = tuple(sorted(folder.glob("spm*.model")))
    if not files:
        raise MtcliError(f"{where}: no SentencePiece model (spm*.model) in {folder}")
    ids = folder / "spm.ids.json"  # an imported model's own numbering of the pieces
    return (*files, ids) if ids.is_file() else files


def inherit(cfg, init: InitialModel):
    """`cfg` with the initial model's `model` and `tokenizer` sections; a set key that differs is an error."""
    from mtcli.config import config_from_dict

    dump = cfg.model_dump(mode="json")
    for name in ("model", "tokenizer"):
        mine, theirs = getattr(cfg, name), dict(init.config.get(name, {}))
        for key in sorted(mine.model_fields_set):
            value = getattr(mine, key)
            if key in FREE_KEYS:
                theirs[key] = value
            elif theirs.get(key) != value:
                raise MtcliError(f"{name}.{key}: {value!r} disagrees with the initial model's {theirs.get(key)!r} "
                                 f"(train.init_from {init.path}); leave {name}.{key} out to take it from there")  # fmt: skip
        dump[name] = theirs
    return config_from_dict(dump, f"train.init_from {init.path}")


def resolve(cfg):
    """(cfg with the inherited sections, InitialModel) when train.init_from is set, else (cfg, None)."""
    if cfg.train.init_from is None:
        return cfg, None
    init = initial_model(cfg.train.init_from)
    return inherit(cfg, init), init


def load_weights(model, init: InitialModel) -> None:
    """Copy the initial model's weights into `model` (same architecture, checked by load)."""
    if init.is_bundle:
        from safetensors.torch import load_model

        load_model(model, str(init.path / "model.safetensors"))
    else:
        from mtcli.training.checkpoints import load_checkpoint

        model.load_state_dict(load_checkpoint(init.path)["model"])
