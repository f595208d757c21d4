"""Training checkpoints, written atomically (temp file + fsync + rename), pruned and averaged.

Checkpoints (`checkpoints/step_00001000.pt`, `best.pt`) hold the whole training state and are
loaded with `weights_only=True`. Averaging writes a bundle through `inference/bundle.py`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from mtcli.data.manifest import SPECIAL, Vocab
from mtcli.errors import MtcliError, RunFailure

STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
SHAPE_SECTIONS = ("model", "tokenizer")


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temp file beside `path`, fsync, then rename; the old file survives a failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise RunFailure(f"could not save {path}: {exc.strerror or exc}; the previous checkpoint is intact") from None


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Numbered checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if STEP_FILE.match(p.name))


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` numbered checkpoints (best.pt is separate)."""
    for old in step_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


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
    diffs = []
    for section in SHAPE_SECTIONS:
        old, new = saved.get(section, {}), current.get(section, {})
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


def average_run(run_dir: Path, last: int, out: Path | None = None) -> Path:
    """Average the last `last` numbered checkpoints of a run into a bundle (default run/model)."""
    run_dir = Path(run_dir)
    chosen = step_checkpoints(run_dir / "checkpoints")[-last:]
    if not chosen:
        raise MtcliError(f"{run_dir / 'checkpoints'}: no checkpoints to average; train first")
    return average_checkpoints(chosen, run_dir / "data", Path(out) if out else run_dir / "model")


def average_checkpoints(chosen: list[Path], data_dir: Path, out: Path) -> Path:
    """Average the weights of checkpoints `chosen` (the last one gives config and step) into a bundle."""
    from mtcli import __version__
    from mtcli.config import config_from_dict
    from mtcli.inference.bundle import export_bundle
    from mtcli.model.transformer import build_model

    head = load_checkpoint(chosen[-1])
    cfg = config_from_dict(head["config"], str(chosen[-1]))
    vocab = Vocab.from_saved(head["vocab"])
    model = build_model(cfg.model, vocab)
    model.load_state_dict(average_state_dicts(chosen))
    meta = {**vocab.saved(), **SPECIAL, "step": head["state"]["step"],
            "weights": f"average of {', '.join(p.name for p in chosen)}", "mtcli": __version__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang}  # fmt: skip
    export_bundle(model, head["config"], data_dir, out, meta)
    return out
