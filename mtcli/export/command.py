"""The `mtcli export` command: check the target, load the bundle, let one writer fill a temporary
folder, stamp it with a marker and swap it in.

Writers (`ctranslate2.write`, `huggingface.write`) take the loaded bundle and a fresh folder; they
raise `MtcliError` naming the feature their format cannot represent. The marker file
`mtcli-export.json` is what lets a later export replace this folder: mtcli never replaces a folder
it did not write.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from mtcli.errors import MtcliError, RunFailure
from mtcli.files import new_dir, swap_dir

MARKER = "mtcli-export.json"
TARGETS = ("ctranslate2", "huggingface")
QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "float16", "bfloat16")
EXTRA = "pip install 'mtcli[export]'"


@dataclass
class Source:
    """A loaded bundle: its folder, model (float32, eval mode, on the CPU), config, tokenizer, metadata."""

    path: Path
    model: object
    cfg: object
    tok: object
    meta: dict


def export_marker(path: Path) -> dict | None:
    """The marker of a folder `mtcli export` wrote, or None."""
    try:
        raw = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and "mtcli_export" in raw else None


def check_export_target(out: Path) -> None:
    """Refuse a target that exists and is not a previous export."""
    if (out.exists() or out.is_symlink()) and (out.is_symlink() or not out.is_dir() or export_marker(out) is None):
        raise MtcliError(f"-o {out}: exists and is not a folder `mtcli export` wrote; mtcli will not "
                         "replace it: choose another folder or move it yourself")  # fmt: skip


def require(module: str) -> None:
    """Import an optional package or fail in one line naming the extra."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MtcliError(f"{module} is not installed: {EXTRA}") from None


def load_source(bundle: Path) -> Source:
    from mtcli.inference.bundle import load_bundle

    model, cfg, tok, meta = load_bundle(Path(bundle), "cpu")
    return Source(Path(bundle), model, cfg, tok, meta)


def run_export(bundle: Path, to: str, out: Path, quantization: str | None = None) -> Path:
    """The `mtcli export` command: the finished export folder."""
    if to not in TARGETS:
        raise MtcliError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise MtcliError(f"--quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    out = Path(out)
    check_export_target(out)
    if to == "ctranslate2":
        from mtcli.export import ctranslate2 as writer
    else:
        from mtcli.export import huggingface as writer
    writer.check_installed()
    source = load_source(bundle)
    writer.check_supported(source, quantization)
    tmp = new_dir(out)
    try:
        writer.write(source, tmp, quantization)
        marker = {"mtcli_export": to, "bundle": str(Path(bundle).resolve()), "quantization": quantization,
                  "mtcli": source.meta.get("mtcli"), "decode": source.cfg.decode.model_dump(mode="json")}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        swap_dir(tmp, out)
    except OSError as exc:
        raise RunFailure(f"could not write the export {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
