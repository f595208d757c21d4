"""Helpers shared by the prepare tests: corpus slices, configs, and running the CLI."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mtcli.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
SMALL_TOKENIZER = {"type": "unigram", "vocab_size": 200, "joint": True}


def head(path: Path, n: int) -> list[str]:
    """The first n lines of a (gzip'd) corpus file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f)]


def write_lines(path: Path, lines: list[str], gz: bool = False) -> str:
    """Write lines (plain or gzip'd) and return the path as a string."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def multi30k_pair(data_dir: Path, tmp: Path, split: str, n: int, gz: bool = False) -> dict:
    """A `pair` source over the first n lines of a Multi30k en-de split, copied to tmp."""
    ext = ".gz" if gz else ""
    src = write_lines(tmp / f"{split}.en{ext}", head(data_dir / f"multi30k/{split}.en.gz", n), gz)
    tgt = write_lines(tmp / f"{split}.de{ext}", head(data_dir / f"multi30k/{split}.de.gz", n), gz)
    return {"type": "pair", "src": src, "tgt": tgt}


def tatoeba_tsv(data_dir: Path, tmp: Path, n: int) -> dict:
    """A `tsv` source over the first n Tatoeba en-fr lines (English repeats with several French)."""
    lines = head(data_dir / "tatoeba-en-fr/eng-fra.tsv.gz", n)
    return {"type": "tsv", "path": write_lines(tmp / "tatoeba.tsv", lines)}


def make_config(tmp: Path, data: dict, tokenizer: dict | None = None, name: str = "t", **extra):
    """A validated Config whose run directory is under tmp."""
    raw = {
        "name": name,
        "run_dir": str(tmp / "runs" / name),
        "data": {"src_lang": "en", "tgt_lang": "de", **data},
        "tokenizer": tokenizer or SMALL_TOKENIZER,
        **extra,
    }
    return config_from_dict(raw, "test")


def run_cli(tmp: Path, cfg_raw: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m mtcli prepare CONFIG ARGS...` with a YAML written from cfg_raw."""
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg_raw))
    env = {**os.environ, "COLUMNS": "200", "HF_DATASETS_CACHE": str(tmp / "hf-cache")}
    return subprocess.run(
        [sys.executable, "-m", "mtcli", "prepare", str(path), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
