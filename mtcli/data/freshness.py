"""What makes prepared data current: input checksums, the fingerprint and the atomic swap.

The up-to-date check must be cheap because `train` runs it before every run: a file's sha256 is
reused from the previous manifest while its path, size and mtime are unchanged, so an unchanged
run costs a few `stat` calls. A touched file with the same bytes is re-hashed once, still gives
the same fingerprint, and its new mtime is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from mtcli.config import DataConfig
from mtcli.data.sources import local_files
from mtcli.files import pid_alive, write_json

FORMAT = 1  # bump when the meaning of prepare's output changes, so old data is rebuilt


def input_records(data: DataConfig, old: dict | None) -> list[dict]:
    """One record per local input file: role, path, size, mtime_ns and sha256 (cached)."""
    cache = {
        (r["path"], r["size"], r["mtime_ns"]): r["sha256"] for r in (old or {}).get("inputs", [])
    }
    records = []
    for role in ("train", "valid", "test"):
        source = getattr(data, role)
        if source is None:
            continue
        for path in local_files(source):
            st = os.stat(path)
            key = (str(path), st.st_size, st.st_mtime_ns)
            sha = cache.get(key) or sha256_file(path)
            records.append(
                {
                    "role": role,
                    "path": str(path),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "sha256": sha,
                }
            )
    return records


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(cfg, records: list[dict], tokenizer_from: dict | None = None) -> str:
    """Hash of everything the prepared data depends on: data and tokenizer config, input bytes
    (and, when fine-tuning, the initial model's SentencePiece files)."""
    payload = {
        "format": FORMAT,
        "data": cfg.data.model_dump(mode="json"),
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "inputs": [(r["role"], r["path"], r["sha256"]) for r in records],
    }
    if tokenizer_from:  # only then, so that every other run keeps its fingerprint
        payload["tokenizer_from"] = sorted(tokenizer_from["files"].items())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def manifest_if_complete(data_dir: Path) -> dict | None:
    """The manifest of a complete prepared directory, or None."""
    try:
        manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files", {})
    for name, size in files.items():
        path = data_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def refresh_stats(data_dir: Path, manifest: dict, records: list[dict]) -> None:
    """Record new sizes/mtimes of inputs whose bytes did not change (keeps the next check cheap)."""
    if manifest.get("inputs") and [(r["path"], r["size"], r["mtime_ns"]) for r in records] != [
        (r["path"], r["size"], r["mtime_ns"]) for r in manifest["inputs"]
    ]:
        lines = {r["path"]: r.get("lines") for r in manifest["inputs"]}
        manifest["inputs"] = [{**r, "lines": lines.get(r["path"])} for r in records]
        write_json(data_dir / "manifest.json", manifest)


def clean_leftovers(run_path: Path) -> None:
    """Undo what a killed prepare of an older mtcli left (`.data.tmp-PID`, `.data.old-PID`).

    Today's temporaries are named by `files.temp_path` and swept by `files.sweep`."""
    if not run_path.is_dir():
        return
    for path in sorted(run_path.glob(".data.*-*")):
        kind, _, pid = path.name[len(".data.") :].partition("-")
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if kind == "old" and not (run_path / "data").exists():
            os.replace(path, run_path / "data")
        else:
            shutil.rmtree(path, ignore_errors=True)
