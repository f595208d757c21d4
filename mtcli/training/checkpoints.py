"""Training checkpoints, written atomically (temp file + fsync + rename), pruned and averaged.

Checkpoints (`checkpoints/step_00001000.pt`, `best.pt`) hold the whole training state and are
loaded with `weights_only=True`. Averaging writes a bundle through `inference/bundle.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mtcli.data.manifest import SPECIAL, Vocab
from mtcli.errors import MtcliError
from mtcli.files import run_lock, save_torch, sweep_run

STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
SHAPE_SECTIONS = ("model", "tokenizer")


def atomic_save(obj: dict, path: Path) -> None:
    """Save a checkpoint through `files.replace_file`; the previous file survives any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(obj, path)


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Numbered checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if STEP_FILE.match(p.name))


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` numbered checkpoints (best.pt is separate)."""
    for old in step_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def load_newest(paths: list[Path], warn) -> tuple[Path, dict]:
    """The newest loadable checkpoint of `paths` (oldest first); a corrupt one is skipped, said by `warn`."""
    for i in range(len(paths) - 1, -1, -1):
        try:
            return paths[i], load_checkpoint(paths[i])
        except MtcliError:
            if i == 0:
                raise
            warn(f"warning: {paths[i]} is corrupt or truncated; resuming from {paths[i - 1].name} instead")
    raise MtcliError("no checkpoints")  # unreachable: callers pass at least one path


def load_checkpoint(path: Path) -> dict:
    """Load a training checkpoint safely; a corrupt or truncated file is a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged zip/pickle data
        raise MtcliError(
            f"{path}: checkpoint is corrupt or truncated ({type(exc).__name__}); "
            "delete it or start over with --restart"
        ) from None


def shape_mismatch(saved: dict, current: dict) -> list[str]:
    """Dotted keys of the model-shaping config sections that differ between checkpoint and config."""
    from mtcli.config import Config

    diffs = []
    for section in SHAPE_SECTIONS:
        # A key added to the schema after the checkpoint was written counts as its default there.
        default = Config.model_fields[section].default.model_dump(mode="json")
        old, new = {**default, **saved.get(section, {})}, current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if key in ("dropout", "attention_dropout"):
                continue  # regularization, not shape: may change between runs
            if old.get(key) != new.get(key):
                diffs.append(f"{section}.{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return diffs


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (fairseq/Marian averaging)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint(path)["model"]
        for key, value in state.items():
            value = value.double() if value.is_floating_point() else value
            total[key] = total[key] + value if key in total else value.clone()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def average_run(run_dir: Path, last: int, out: Path | None = None) -> tuple[Path, bool]:
    """Average the last `last` numbered checkpoints of a run into a bundle (default run/model).

    Holds the run lock (a training run would prune the checkpoints being read); returns the
    bundle and whether it replaced a previous bundle.
    """
    from mtcli.inference.bundle import check_target

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MtcliError(f"{run_dir}: no such run directory")
    out = Path(out) if out else run_dir / "model"
    check_target(out)  # before any work: refuse a user's folder at once
    with run_lock(run_dir):
        sweep_run(run_dir)
        chosen = step_checkpoints(run_dir / "checkpoints")[-last:]
        if not chosen:
            raise MtcliError(f"{run_dir / 'checkpoints'}: no checkpoints to average; train first")
        return out, average_checkpoints(chosen, run_dir / "data", out)


def average_checkpoints(chosen: list[Path], data_dir: Path, out: Path) -> bool:
    """Average the weights of checkpoints `chosen` (the last one gives config and step) into a bundle."""
    from mtcli import __version__
    from mtcli.config import config_from_dict
    from mtcli.inference.bundle import export_bundle
    from mtcli.model.transformer import build_model, spec_digest

    head = load_checkpoint(chosen[-1])
    cfg = config_from_dict(head["config"], str(chosen[-1]))
    vocab = Vocab.from_saved(head["vocab"])
    model = build_model(cfg.model, vocab)
    model.load_state_dict(average_state_dicts(chosen))
    meta = {**vocab.saved(), **SPECIAL, "step": head["state"]["step"],
            "weights": f"average of {', '.join(p.name for p in chosen)}", "mtcli": __version__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang}  # fmt: skip
    return export_bundle(model, head["config"], data_dir, out, meta, spec_digest(cfg.model, vocab))
