"""Model bundles: the folder `translate` needs, written atomically and loaded without unpickling.

A bundle (`run_dir/model/`) holds safetensors weights, the resolved config as YAML, the
SentencePiece model(s) and metadata as JSON, so a model is rebuilt from its own files alone.
`runs/latest` is a relative symlink to the newest bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from mtcli.errors import MtcliError, RunFailure


def export_bundle(model, config_dump: dict, data_dir: Path, bundle_dir: Path, metadata: dict) -> None:
    """Write model/ (weights, config, tokenizer, metadata) to a temp folder and swap it in."""
    from safetensors.torch import save_model

    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=bundle_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dump, sort_keys=False, allow_unicode=True))
        for spm_file in sorted(Path(data_dir).glob("spm*.model")):
            shutil.copy2(spm_file, tmp / spm_file.name)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
        (tmp / "model.safetensors").chmod(0o644)
        old = bundle_dir.with_name(f".{bundle_dir.name}.old")
        if bundle_dir.exists():
            os.replace(bundle_dir, old)
        os.replace(tmp, bundle_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunFailure(f"could not write the model bundle {bundle_dir}: {exc}") from None


def link_latest(bundle_dir: Path) -> Path:
    """Point `<runs>/latest` at this bundle (relative symlink, replaced atomically)."""
    latest = bundle_dir.parent.parent / "latest"
    target = os.path.relpath(bundle_dir, latest.parent)
    tmp = latest.with_name(".latest.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, latest)
    return latest


def load_bundle(path: Path, device: str = "cpu"):
    """(model in eval mode, Config, Tokenizer, metadata) from a bundle folder."""
    from safetensors.torch import load_model

    from mtcli.config import config_from_dict
    from mtcli.data.manifest import Vocab
    from mtcli.data.spm import Tokenizer
    from mtcli.model.transformer import build_model

    path = Path(path)
    needed = ["model.safetensors", "config.yaml", "metadata.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.exists() else f"is not a model bundle (missing {', '.join(missing)})"
        raise MtcliError(f"{path}: {what}; train one with `mtcli train CONFIG` or pass --model PATH")
    try:
        meta = json.loads((path / "metadata.json").read_text())
        cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
        tok = Tokenizer(path)
        model = build_model(cfg.model, Vocab.from_saved(meta))
        load_model(model, str(path / "model.safetensors"), device=device)
    except MtcliError:
        raise
    except Exception as exc:
        raise MtcliError(f"{path}: incompatible or damaged model bundle ({type(exc).__name__}: {exc})") from None
    return model.to(device).eval(), cfg, tok, meta
