"""`mtcli prepare`: read → clean/filter/dedup → split → SentencePiece → binarize, into run_dir/data.

Streaming passes keep memory flat: the scan writes cleaned pairs to a work file and keeps only a
one-byte split code per pair (plus an 8-byte pair hash while deduplicating); the grouped
valid/test carve remembers only its best-ranked groups; SentencePiece gets a seeded sample of at
most `tokenizer.input_sentence_size` sentences; the encode pass reads the work file back in chunks
and streams ids to disk. Everything is built in a temporary folder beside `run_dir/data` and swapped in only when
complete (`files.swap_dir`), under the run lock.

Valid/test are references for BLEU, so they are only cleaned (NFC, whitespace) and stripped of
pairs with an empty side; the length, ratio and duplicate filters apply to train alone.
"""

from __future__ import annotations

import platform
import random
import resource
import shutil
import time
from array import array
from collections import Counter
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from itertools import islice
from pathlib import Path

import numpy as np
from rich.console import Console

import mtcli.data.freshness as freshness
import mtcli.finetune as finetune
from mtcli.config import Config, DataConfig, FilterConfig, TokenizerConfig
from mtcli.data.binarize import Binarizer, encode_file
from mtcli.data.clean import (
    DROPPED,
    REASONS,
    SPLIT_CODES,
    TRAIN,
    GroupSplitter,
    clean_text,
    first_occurrences,
    pair_hash,
    pair_reason,
    stable_hash,
    unpunctuated_copies,
)
from mtcli.data.sources import read_source
from mtcli.data.splits import ids_dtype
from mtcli.data.spm import load_spm, train_spm
from mtcli.data.summary import print_summary, progress_display, rss_mb
from mtcli.errors import MtcliError
from mtcli.files import new_dir, run_lock, swap_dir, sweep_run, write_json

SCAN_REPORT = 10_000  # pairs between progress updates


def run_prepare(cfg: Config, force: bool = False, init: finetune.InitialModel | None = None) -> dict:
    """Prepare cfg's data into `cfg.run_path / "data"` unless it is up to date; returns the manifest.

    `init`: the initial model `train` has already resolved (else train.init_from is read here)."""
    with run_lock(cfg.run_path):  # re-entrant: `train` already holds it
        if init is None:
            cfg, init = finetune.resolve(cfg)
        return _prepare_locked(cfg, init, force)


def _prepare_locked(cfg: Config, init: finetune.InitialModel | None, force: bool) -> dict:
    console = Console(stderr=True)
    data_dir = cfg.run_path / "data"
    freshness.clean_leftovers(cfg.run_path)
    sweep_run(cfg.run_path)
    old = freshness.manifest_if_complete(data_dir)
    records = freshness.input_records(cfg.data, old)
    tokenizer_from = _tokenizer_from(init)
    fp = freshness.fingerprint(cfg, records, tokenizer_from)
    if old and old.get("fingerprint") == fp and not force:
        freshness.refresh_stats(data_dir, old, records)
        console.print(f"data up to date: {data_dir} (--force rebuilds it)", highlight=False)
        return old
    tmp = new_dir(data_dir)
    try:
        manifest = build(cfg, tmp, records, fp, console, tokenizer_from)
        swap_dir(tmp, data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed away after a successful swap
    print_summary(console, manifest, data_dir)
    return manifest


def _tokenizer_from(init: finetune.InitialModel | None) -> dict | None:
    """The initial model's SentencePiece files and checksums (None when training new ones)."""
    if init is None:
        return None
    return {"path": str(init.path), "files": {p.name: freshness.sha256_file(p) for p in init.spm_files},
            "dir": str(init.spm_files[0].parent)}  # fmt: skip


def build(cfg, out: Path, records: list[dict], fp: str, console: Console, tokenizer_from: dict | None) -> dict:
    """Build the whole prepared directory in `out` (a temp dir); returns the manifest."""
    data, start, times = cfg.data, time.time(), {}
    work = out / "work"
    work.mkdir()
    with progress_display(console) as progress:
        scans, eval_keys = {}, set()
        for split in ("valid", "test"):
            if getattr(data, split) is not None:
                scans[split] = scan_eval(getattr(data, split), data, work / f"{split}.tsv", split, progress)
                eval_keys |= scans[split].pop("keys")
        overlap = eval_keys if data.filters.remove_eval_overlap else set()
        scans["train"] = scan_train(data, work / "train.tsv", overlap, progress)
        times["read"] = time.time() - start

        t = time.time()
        if tokenizer_from:
            models = copy_models(cfg.tokenizer, tokenizer_from, out)
        else:
            models = train_models(cfg.tokenizer, data, work / "train.tsv", scans["train"]["codes"], out, progress)
        times["spm"] = time.time() - t

        t = time.time()
        sizes = {side: sp.get_piece_size() for side, sp in models.items()}
        dtype = ids_dtype(max(sizes.values()))
        splits = present_splits(data)
        binarizer = Binarizer(out, splits, dtype, data.filters)
        augment = None
        if data.strip_punct > 0:
            augment = partial(unpunctuated_copies, fraction=data.strip_punct, seed=data.split_seed)
        encode_file(
            work / "train.tsv", scans["train"]["codes"], models, binarizer, progress, augment
        )
        for split in ("valid", "test"):
            if split in scans:
                encode_file(work / f"{split}.tsv", SPLIT_CODES[split], models, binarizer, progress)
        results = binarizer.close()
        times["encode"] = time.time() - t
        if results["train"]["pairs"] == 0:
            dropped = scans["train"]["filters"] + binarizer.filters["train"]
            raise MtcliError(_empty_message("train", dropped, scans["train"]["read"]))
    shutil.rmtree(work)
    times["total"] = time.time() - start
    manifest = make_manifest(cfg, fp, records, scans, binarizer, results, sizes, dtype, times)
    manifest["vocab"] = _mapped_vocab(manifest["vocab"], out)
    manifest["tokenizer_from"] = tokenizer_from  # None: trained here on the train split
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    write_json(out / "manifest.json", manifest)
    return manifest


def present_splits(data: DataConfig) -> list[str]:
    """train, valid (own source or carved) and test (own source, or carved when test_size > 0)."""
    has_test = data.test is not None or data.test_size > 0
    return ["train", "valid"] + (["test"] if has_test else [])


# ----------------------------------------------------------------------------- pass 1: scan


def scan_eval(source, data: DataConfig, path: Path, split: str, progress) -> dict:
    """Clean a valid/test source into `path`; only pairs with an empty side are dropped.

    Returns the keys of its source sentences (for removing them from train)."""
    task = progress.add_task(f"reading {split}", total=None)
    filters, read, keys = Counter(), 0, set()
    with open(path, "w", encoding="utf-8") as f:
        for raw_src, raw_tgt in read_source(source, data.src_lang, data.tgt_lang):
            read += 1
            src, tgt = clean_text(raw_src), clean_text(raw_tgt)
            reason = pair_reason(src, tgt, None)
            if reason:
                filters[reason] += 1
                continue
            f.write(f"{src}\t{tgt}\n")
            keys.add(stable_hash(src, data.split_seed))
            if read % SCAN_REPORT == 0:
                progress.update(task, completed=read)
    progress.update(task, completed=read, total=read)
    if read - sum(filters.values()) == 0:
        raise MtcliError(_empty_message(split, filters, read))
    return {"read": read, "filters": filters, "keys": keys}


def carve_sizes(data: DataConfig) -> tuple[int, int]:
    """Pairs to carve out of train for valid and test (0 where they have their own source)."""
    return (
        data.valid_size if data.valid is None else 0,
        data.test_size if data.test is None else 0,
    )


def scan_train(data: DataConfig, path: Path, eval_keys: set[int], progress) -> dict:
    """Clean and filter the train source into `path`, dedup it and carve valid/test if asked.

    Memory per pair: a one-byte split code (TRAIN, VALID, TEST or DROPPED for a duplicate), plus
    an 8-byte pair hash while deduplicating.
    """
    fc, seed = data.filters, data.split_seed
    task = progress.add_task("reading train", total=data.max_train_pairs)
    filters, read, peak = Counter(), 0, rss_mb()
    kept, pair_hashes = 0, array("Q")
    splitter = GroupSplitter(*carve_sizes(data))
    pairs = read_source(data.train, data.src_lang, data.tgt_lang)
    with open(path, "w", encoding="utf-8") as f:
        for raw_src, raw_tgt in islice(pairs, data.max_train_pairs):
            read += 1
            if read % SCAN_REPORT == 0:
                progress.update(task, completed=read)
                peak = max(peak, rss_mb())
            src, tgt = clean_text(raw_src), clean_text(raw_tgt)
            reason = pair_reason(src, tgt, fc.max_chars)
            key = stable_hash(src, seed) if reason is None else 0
            if reason is None and key in eval_keys:
                reason = "eval_overlap"
            if reason:
                filters[reason] += 1
                continue
            f.write(f"{src}\t{tgt}\n")
            splitter.add(key, kept)
            kept += 1
            if fc.dedup:
                pair_hashes.append(pair_hash(src, tgt))
    progress.update(task, completed=read, total=read)
    codes = np.full(kept, TRAIN, dtype=np.uint8)
    if fc.dedup:
        codes[~first_occurrences(np.frombuffer(pair_hashes, dtype=np.uint64))] = DROPPED
        filters["duplicate"] = int((codes == DROPPED).sum())
    del pair_hashes
    carved = carve(data, codes, splitter, filters, read)
    return {"read": read, "filters": filters, "codes": codes, "carved": carved,
            "rss_mb": max(peak, rss_mb())}  # fmt: skip


def carve(data: DataConfig, codes: np.ndarray, splitter: GroupSplitter, filters: Counter, read: int) -> dict:
    """Move the chosen source-sentence groups of train pairs into valid/test; returns the counts."""
    n_valid, n_test = carve_sizes(data)
    live = int((codes == TRAIN).sum())
    if not live:
        raise MtcliError(_empty_message("train", filters, read))
    if n_valid + n_test >= live:
        raise MtcliError(
            f"train has {live} pairs after filtering, too few to carve "
            f"data.valid_size={n_valid} + data.test_size={n_test} out of it; "
            "lower them or give valid/test sources"
        )
    return splitter.assign(codes)


def _empty_message(split: str, filters: Counter, read: int | None = None) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in filters.items() if n) or "none dropped"
    got = f"{read} pairs read; " if read is not None else ""
    return f"{split}: no pairs left after filtering ({got}{dropped}); check the source and data.filters"


# ----------------------------------------------------------------------------- SentencePiece


def train_models(tok: TokenizerConfig, data: DataConfig, path: Path, codes: np.ndarray, out: Path, progress) -> dict:
    """Train the joint model (`spm.model`) or one per side (`spm.src.model`, `spm.tgt.model`)."""
    n_train = int((codes == TRAIN).sum())
    sides = ["src", "tgt"]
    plans = {"joint": sides} if tok.joint else {side: [side] for side in sides}
    models = {}
    for name, use in plans.items():
        prefix = out / ("spm" if tok.joint else f"spm.{name}")
        label = f"SentencePiece {tok.type} {tok.vocab_size} ({name})"
        task = progress.add_task(label, total=n_train * len(use))
        # Sample pairs here rather than let SentencePiece sample: it then holds (and leaves
        # behind) only what it trains on, whatever the corpus size.
        keep = min(1.0, tok.input_sentence_size / (n_train * len(use)))
        lines = _train_sentences(
            path, codes, use, keep, data.split_seed,
            lambda n, task=task: progress.update(task, completed=n),
        )  # fmt: skip
        model_path = train_spm(lines, prefix, tok, data.split_seed, data.filters.max_chars)
        for side in use:
            models[side] = load_spm(model_path)
    return models


def copy_models(tok: TokenizerConfig, tokenizer_from: dict, out: Path) -> dict:
    """Fine-tuning: the initial model's SentencePiece model(s), copied unchanged, not retrained."""
    folder = Path(tokenizer_from["dir"])
    mapped = "spm.ids.json" in tokenizer_from["files"]  # an imported model: two files and its own ids
    names = ["spm.src.model", "spm.tgt.model", "spm.ids.json"] if mapped else (
        ["spm.model"] if tok.joint else ["spm.src.model", "spm.tgt.model"])  # fmt: skip
    models = {}
    for name in names:
        if name not in tokenizer_from["files"]:
            raise MtcliError(f"train.init_from {tokenizer_from['path']}: {name} is missing from {folder}")
        shutil.copy2(folder / name, out / name)
        if freshness.sha256_file(out / name) != tokenizer_from["files"][name]:
            raise MtcliError(f"{folder / name}: changed while it was being copied; run prepare again")
    if mapped:
        from mtcli.data.spm import MappedPieces, read_id_map

        ids = read_id_map(out)
        return {side: MappedPieces(load_spm(out / f"spm.{side}.model"), ids[f"{side}_pieces"], ids["unk_id"])
                for side in ("src", "tgt")}  # fmt: skip
    for side in ("src", "tgt"):
        models[side] = load_spm(out / (names[0] if tok.joint else f"spm.{side}.model"))
    return models


def _train_sentences(
    path: Path, codes: np.ndarray, sides: list[str], keep: float, seed: int, report
):
    """Train-split sentences of the work file (one or both sides), each pair kept with
    probability `keep` (seeded), as SentencePiece reads them."""
    index = [["src", "tgt"].index(side) for side in sides]
    rng = random.Random(seed)
    done = 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if codes[i] != TRAIN:
                continue
            done += len(index)
            if done % SCAN_REPORT < len(index):
                report(done)
            if keep < 1.0 and rng.random() >= keep:
                continue
            fields = line.rstrip("\n").split("\t")
            for k in index:
                yield fields[k]
    report(done)


# ----------------------------------------------------------------------------- manifest


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def counts_sequence(
    split: str, fc: FilterConfig, scans: dict, filters: dict, results: dict, augmented: int
) -> dict:
    """Pairs remaining after each step, in order: {"read": n, "empty": n, ...}."""
    scan = scans.get(split)
    if scan is None:  # carved out of train: already filtered there
        return {"read": results[split]["pairs"]}
    left = scan["read"]
    steps = {"read": left}
    for reason in _reasons(split, fc):
        if reason == "max_tokens":  # carving happens between the text and the token filters
            for carved_split, n in scan["carved"].items():
                left -= n
                steps[f"carve_{carved_split}"] = left
            if split == "train" and augmented:  # added before the token filters
                left += augmented
                steps["strip_punct"] = left
        left -= filters[split][reason]
        steps[reason] = left
    return steps


def make_manifest(cfg, fp, records, scans, binarizer, results, sizes, dtype, times) -> dict:
    """Everything a reader of the prepared data needs to know, as a JSON-able dict."""
    data, tok = cfg.data, cfg.tokenizer
    reads = {split: scan["read"] for split, scan in scans.items()}
    filters = {}
    for split in results:
        found = Counter(scans.get(split, {}).get("filters", {})) + binarizer.filters[split]
        filters[split] = {reason: found.get(reason, 0) for reason in _reasons(split, data.filters)}
    splits = {}
    for split, stats in results.items():
        origin = "carved from train" if split in scans["train"]["carved"] else split
        read = scans[split]["read"] if split in scans else stats["pairs"]
        splits[split] = {"source": origin, "read": read, **stats}
    return {
        "format": freshness.FORMAT,
        "fingerprint": fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "dtype": dtype.name,
        "vocab": _vocab_entry(tok, sizes),
        "splits": splits,
        "augmented": {"strip_punct": binarizer.augmented},
        "filters": filters,
        "counts": {
            split: counts_sequence(split, data.filters, scans, filters, results, binarizer.augmented)
            for split in results
        },
        "inputs": [{**r, "lines": reads.get(r["role"])} for r in records],
        "config": {"data": data.model_dump(mode="json"), "tokenizer": tok.model_dump(mode="json")},
        "versions": _versions(),
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "rss_mb": {
            "read": scans["train"]["rss_mb"],
            "encode_start": binarizer.start_rss_mb,
            "encode": binarizer.peak_rss_mb,
            "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }


def _vocab_entry(tok: TokenizerConfig, sizes: dict) -> dict:
    """The manifest's `vocab` (read back by `manifest.Manifest`)."""
    return {
        "joint": tok.joint,
        "type": tok.type,
        "src_size": sizes["src"],
        "tgt_size": sizes["tgt"],
        "character_coverage": tok.character_coverage,
        "models": ["spm.model"] if tok.joint else ["spm.src.model", "spm.tgt.model"],
    }


def _mapped_vocab(entry: dict, out: Path) -> dict:
    """An imported model's vocabulary entry: its two SentencePiece files and its own special ids."""
    from mtcli.data.spm import read_id_map

    ids = read_id_map(out)
    if ids is None:
        return entry
    return {**entry, "models": ["spm.src.model", "spm.tgt.model"],
            "special": {k: ids[k] for k in ("pad_id", "unk_id", "bos_id", "eos_id")}}  # fmt: skip


def _versions() -> dict:
    return {
        "mtcli": _version("mtcli"),
        "sentencepiece": _version("sentencepiece"),
        "datasets": _version("datasets"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
    }


def _reasons(split: str, fc: FilterConfig) -> list[str]:
    if split != "train":
        return ["empty"]
    reasons = list(REASONS)
    if not fc.dedup:
        reasons.remove("duplicate")
    if not fc.remove_eval_overlap:
        reasons.remove("eval_overlap")
    return reasons
