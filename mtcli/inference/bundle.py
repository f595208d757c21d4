"""Model bundles: the folder `translate` needs, written atomically and loaded without unpickling.

A bundle (`run_dir/model/`) holds safetensors weights, the resolved config as YAML, the
SentencePiece model(s) and metadata as JSON, so a model is rebuilt from its own files alone.
The weights file also stores a digest of the model spec (`spec_digest`): a `config.yaml` edited
to another activation or norm is refused at load time (bundles without it load unchecked).
`runs/latest` is a relative symlink to the newest bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from mtcli.errors import MtcliError, RunFailure
from mtcli.files import new_dir, swap_dir, sweep, temp_path

BUNDLE_FILES = ("model.safetensors", "config.yaml", "metadata.json")
SPEC_KEY = "mtcli_model_spec"


def is_bundle(path: Path) -> bool:
    """Whether `path` is a folder mtcli wrote as a bundle and holds nothing else (safe to replace)."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    if not set(BUNDLE_FILES) <= names or any(n not in BUNDLE_FILES and not _is_spm(n) for n in names):
        return False
    try:
        return "mtcli" in json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _is_spm(name: str) -> bool:
    return (name.startswith("spm") and name.endswith(".model")) or name == "spm.ids.json"


def check_target(bundle_dir: Path, option: str = "-o") -> bool:
    """Refuse a target that exists and is not an mtcli bundle; True when a bundle will be replaced."""
    if not bundle_dir.exists() and not bundle_dir.is_symlink():
        return False
    if not is_bundle(bundle_dir):
        raise MtcliError(f"{option} {bundle_dir}: exists and is not an mtcli model bundle; "
                         "mtcli will not replace it: choose another folder or move it yourself")  # fmt: skip
    return True


def export_bundle(model, config_dump: dict, data_dir: Path, bundle_dir: Path, metadata: dict, digest: str) -> bool:
    """Write a bundle to a temp folder and swap it in; True when it replaced a previous bundle."""
    from safetensors.torch import save_model

    replacing = check_target(bundle_dir)
    tmp = new_dir(bundle_dir)
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={SPEC_KEY: digest})
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dump, sort_keys=False, allow_unicode=True))
        for spm_file in sorted(f for f in Path(data_dir).glob("spm*") if _is_spm(f.name)):
            shutil.copy2(spm_file, tmp / spm_file.name)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
        (tmp / "model.safetensors").chmod(0o644)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        swap_dir(tmp, bundle_dir)
    except OSError as exc:
        raise RunFailure(f"could not write the model bundle {bundle_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return replacing


def link_latest(bundle_dir: Path) -> Path | None:
    """Point `<runs>/latest` at this bundle: only a symlink (or nothing) there is replaced."""
    latest = bundle_dir.parent.parent / "latest"
    if latest.exists() or latest.is_symlink():
        if not latest.is_symlink():
            print(f"warning: {latest} is not a symlink mtcli made; left it alone (not pointed at {bundle_dir})",
                  file=sys.stderr)  # fmt: skip
            return None
    sweep(latest.parent, only=latest.name)  # a symlink a killed run left half-made
    tmp = temp_path(latest)
    try:
        os.symlink(os.path.relpath(bundle_dir, latest.parent), tmp)
        os.replace(tmp, latest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"warning: could not point {latest} at {bundle_dir}: {exc.strerror or exc}", file=sys.stderr)
        return None
    return latest


def load_bundle(path: Path, device: str = "cpu"):
    """(model in eval mode, Config, Tokenizer, metadata) from a bundle folder."""
    from safetensors.torch import load_model

    from mtcli.config import config_from_dict
    from mtcli.data.manifest import Vocab
    from mtcli.data.spm import Tokenizer
    from mtcli.model.transformer import build_model, spec_digest
    from mtcli.safe_yaml import load_yaml

    path = Path(path)
    missing = [n for n in BUNDLE_FILES if not (path / n).is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.exists() else f"is not a model bundle (missing {', '.join(missing)})"
        raise MtcliError(f"{path}: {what}; train one with `mtcli train CONFIG` or pass --model PATH")
    config_path = path / "config.yaml"
    try:
        meta = json.loads((path / "metadata.json").read_text())
        cfg = config_from_dict(load_yaml(config_path.read_text(encoding="utf-8"), str(config_path)), str(config_path))
        vocab = Vocab.from_saved(meta)
        stored = _stored_digest(path / "model.safetensors")
        if stored is not None and stored != spec_digest(cfg.model, vocab):
            raise MtcliError(f"{config_path}: the model section does not describe these weights (the model spec "
                             "digest stored in model.safetensors differs); the bundle was edited or mixed up")  # fmt: skip
        tok = Tokenizer(path)
        model = build_model(cfg.model, vocab)
        load_model(model, str(path / "model.safetensors"), device=device)
    except MtcliError:
        raise
    except Exception as exc:
        raise MtcliError(f"{path}: incompatible or damaged model bundle ({type(exc).__name__}: {exc})") from None
    return model.to(device).eval(), cfg, tok, meta


def _stored_digest(weights: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return (f.metadata() or {}).get(SPEC_KEY)
