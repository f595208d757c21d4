"""Readers for every corpus source type: each streams (src, tgt) pairs of raw text.

Readers never hold a corpus in memory. Bad input raises MtcliError with one line that names the
file (or dataset) and the line (or row): line counts that differ, undecodable bytes, too few TSV
columns, missing JSONL keys, missing files, unknown Hugging Face columns.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import Any, BinaryIO

from mtcli.config import (
    DEFAULT_DATA_ROOT,
    HfDiskSource,
    HfSource,
    JsonlSource,
    PairSource,
    TsvSource,
)
from mtcli.errors import MtcliError

Pair = tuple[str, str]


def missing_file(path: str) -> MtcliError:
    """The error for a missing corpus file; under the corpus root it says where to get corpora."""
    root = Path(os.environ.get("MTCLI_DATA", DEFAULT_DATA_ROOT)).absolute()
    if Path(path).absolute().is_relative_to(root):
        return MtcliError(
            f"{path}: file not found; the shipped configs read corpora from $MTCLI_DATA "
            f"(now {root}): see data/README.md for where to get them"
        )
    return MtcliError(f"{path}: file not found")


def open_binary(path: str) -> BinaryIO:
    """Open a plain or gzip'd file for reading bytes; a missing file is a user error."""
    p = Path(path)
    if not p.is_file():
        raise missing_file(path)
    with open(p, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(p, "rb") if gz else open(p, "rb")


def read_lines(path: str) -> Iterator[str]:
    """Decoded lines of a text file (no line ending); undecodable bytes name the file and line."""
    with open_binary(path) as f:
        n = 0
        try:
            for n, raw in enumerate(f, 1):  # noqa: B007 (n is used after the loop on errors)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad = raw[exc.start]
                    raise MtcliError(
                        f"{path}: line {n}: invalid UTF-8 (byte 0x{bad:02x} at offset {exc.start})"
                    ) from None
                if n == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield line.rstrip("\r\n")
        except (OSError, EOFError, zlib.error) as exc:
            raise MtcliError(f"{path}: line {n + 1}: cannot read: {exc}") from None


def read_pair(source: PairSource) -> Iterator[Pair]:
    """Two line-aligned files; differing line counts are an error naming both files and counts."""
    src_lines, tgt_lines = read_lines(source.src), read_lines(source.tgt)
    n = 0
    for n, src in enumerate(src_lines, 1):  # noqa: B007
        tgt = next(tgt_lines, None)
        if tgt is None:
            n_src = n + sum(1 for _ in src_lines)
            raise MtcliError(_mismatch(source, n_src, n - 1))
        yield src, tgt
    rest = sum(1 for _ in tgt_lines)
    if rest:
        raise MtcliError(_mismatch(source, n, n + rest))


def _mismatch(source: PairSource, n_src: int, n_tgt: int) -> str:
    return f"line counts differ: {source.src} has {n_src} lines, {source.tgt} has {n_tgt}"


def read_tsv(source: TsvSource) -> Iterator[Pair]:
    """Tab-separated lines; `columns` picks source and target. A blank line is an empty pair."""
    i, j = source.columns
    need = max(i, j) + 1
    for n, line in enumerate(read_lines(source.path), 1):
        if not line.strip():
            yield "", ""
            continue
        fields = line.split("\t")
        if len(fields) < need:
            raise MtcliError(
                f"{source.path}: line {n}: expected at least {need} tab-separated columns, "
                f"found {len(fields)} (data.*.columns is {list(source.columns)})"
            )
        yield fields[i], fields[j]


def _lookup(obj: Any, dotted: str) -> Any:
    """obj['a']['b'] for 'a.b'; KeyError when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted)
        obj = obj[part]
    return obj


def read_jsonl(source: JsonlSource) -> Iterator[Pair]:
    """One JSON object a line; `keys` (dotted for nesting) pick source and target strings."""
    for n, line in enumerate(read_lines(source.path), 1):
        if not line.strip():
            yield "", ""
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MtcliError(f"{source.path}: line {n}: invalid JSON: {exc.msg}") from None
        pair = []
        for key in source.keys:
            try:
                value = _lookup(obj, key)
            except KeyError:
                raise MtcliError(f"{source.path}: line {n}: missing key '{key}'") from None
            pair.append(_as_text(value, f"{source.path}: line {n}: key '{key}'"))
        yield pair[0], pair[1]


def _as_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MtcliError(f"{where}: expected a string, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- Hugging Face


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def load_hf(source: HfSource):
    """`datasets.load_dataset(name, config, split=..., data_files=...)`, errors made one line."""
    datasets = _quiet_datasets()
    try:
        return datasets.load_dataset(
            source.name, source.config, split=source.split, data_files=source.data_files
        )
    except Exception as exc:  # datasets raises many types (hub, file, split, builder errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MtcliError(f"hf dataset '{source.name}': cannot load: {first}") from None


def load_hf_disk(source: HfDiskSource):
    """`datasets.load_from_disk(path)`; a DatasetDict needs `split` (default: its only split)."""
    if not Path(source.path).is_dir():
        raise MtcliError(f"{source.path}: dataset directory not found")
    datasets = _quiet_datasets()
    try:
        ds = datasets.load_from_disk(source.path)
    except Exception as exc:  # FileNotFoundError for a folder that is not a saved dataset, etc.
        raise MtcliError(f"{source.path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        split = source.split or (names[0] if len(names) == 1 else None)
        if split not in ds:
            raise MtcliError(f"{source.path}: choose split: one of {', '.join(names)}")
        ds = ds[split]
    elif source.split:
        raise MtcliError(f"{source.path}: holds a single Dataset; remove split: {source.split}")
    return ds


def hf_pairs(ds, source: HfSource | HfDiskSource, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    """Rows of a loaded dataset as pairs, from a translation dict column or two flat columns."""
    where = f"hf dataset '{source.name}'" if isinstance(source, HfSource) else source.path
    columns = list(ds.column_names)
    if source.columns:
        for col in source.columns:
            if col not in columns:
                raise MtcliError(f"{where}: unknown column '{col}' (columns: {', '.join(columns)})")
        return _flat_rows(ds, source.columns, where)
    trans = source.translation or ("translation" if "translation" in columns else None)
    if trans is None:
        if src_lang in columns and tgt_lang in columns:
            return _flat_rows(ds, (src_lang, tgt_lang), where)
        raise MtcliError(
            f"{where}: set columns: [SRC, TGT] or translation: COLUMN "
            f"(columns: {', '.join(columns)})"
        )
    if trans not in columns:
        raise MtcliError(f"{where}: unknown column '{trans}' (columns: {', '.join(columns)})")
    return _translation_rows(ds, trans, (src_lang, tgt_lang), where)


def _flat_rows(ds, cols: tuple[str, str], where: str) -> Iterator[Pair]:
    row = 0
    for batch in ds.iter(batch_size=1000):
        for src, tgt in zip(batch[cols[0]], batch[cols[1]]):
            row += 1
            yield _as_text(src, f"{where}: row {row}"), _as_text(tgt, f"{where}: row {row}")


def _translation_rows(ds, col: str, langs: tuple[str, str], where: str) -> Iterator[Pair]:
    row = 0
    for batch in ds.iter(batch_size=1000):
        for item in batch[col]:
            row += 1
            item = item or {}
            for lang in langs:
                if lang not in item:
                    keys = ", ".join(item) or "none"
                    raise MtcliError(
                        f"{where}: row {row}: column '{col}' has no '{lang}' (keys: {keys})"
                    )
            yield (
                _as_text(item[langs[0]], f"{where}: row {row}"),
                _as_text(item[langs[1]], f"{where}: row {row}"),
            )


# ----------------------------------------------------------------------------- dispatch


def read_source(source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    """Stream raw (src, tgt) pairs from any source type."""
    if isinstance(source, PairSource):
        return read_pair(source)
    if isinstance(source, TsvSource):
        return read_tsv(source)
    if isinstance(source, JsonlSource):
        return read_jsonl(source)
    if isinstance(source, HfSource):
        return hf_pairs(load_hf(source), source, src_lang, tgt_lang)
    return hf_pairs(load_hf_disk(source), source, src_lang, tgt_lang)


def local_files(source) -> list[str]:
    """The local files a source reads (for checksums); a missing required file is an error."""
    if isinstance(source, PairSource):
        paths = [source.src, source.tgt]
    elif isinstance(source, (TsvSource, JsonlSource)):
        paths = [source.path]
    elif isinstance(source, HfDiskSource):
        if not Path(source.path).is_dir():
            raise MtcliError(f"{source.path}: dataset directory not found")
        return _files_under(source.path)
    else:
        return _hf_local_files(source)
    for path in paths:
        if not Path(path).is_file():
            raise missing_file(path)
    return paths


def _files_under(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())


def _hf_local_files(source: HfSource) -> list[str]:
    """Local data files of an hf source (a local folder as `name`, local `data_files`)."""
    files = _files_under(source.name) if Path(source.name).is_dir() else []
    specs = [source.data_files] if isinstance(source.data_files, str) else source.data_files or []
    for spec in specs:
        if "://" in spec:
            continue  # remote: identified by the config alone
        matches = sorted(glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise MtcliError(f"{spec}: file not found (data.*.data_files)")
        files += matches
    return files
