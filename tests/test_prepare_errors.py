"""Bad input to `mtcli prepare`, through the CLI: exit 2, one `error:` line naming the file, and
nothing written. Plus the pure pieces of prepare (cleanup, grouped split, readers, writer)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from prepare_helpers import head, run_cli, write_lines

from mtcli.config import PairSource
from mtcli.data.clean import (
    TEST,
    TRAIN,
    VALID,
    GroupSplitter,
    clean_text,
    pair_reason,
    stable_hash,
)
from mtcli.data.sources import read_lines, read_pair
from mtcli.data.splits import Split, SplitWriter
from mtcli.errors import MtcliError


def config(tmp_path, train: dict, **extra) -> dict:
    data = {"src_lang": "en", "tgt_lang": "de", "train": train, "valid_size": 2, "test_size": 0}
    return {"name": "bad", "run_dir": str(tmp_path / "run"), "data": {**data, **extra},
            "tokenizer": {"vocab_size": 200}}  # fmt: skip


def pair(tmp_path, src_lines, tgt_lines) -> dict:
    return {"type": "pair", "src": write_lines(tmp_path / "a.en", src_lines),
            "tgt": write_lines(tmp_path / "a.de", tgt_lines)}  # fmt: skip


def bad_bytes(tmp_path) -> dict:
    (tmp_path / "a.en").write_bytes(b"Hello.\nCaf\xe9 au lait.\n")
    (tmp_path / "a.de").write_bytes(b"Hallo.\nKaffee.\n")
    return {"type": "pair", "src": str(tmp_path / "a.en"), "tgt": str(tmp_path / "a.de")}


def hf_disk(tmp_path) -> dict:
    from datasets import Dataset

    Dataset.from_dict({"en": ["a"], "de": ["b"]}).save_to_disk(str(tmp_path / "ds"))
    return {"type": "hf_disk", "path": str(tmp_path / "ds"), "columns": ["en", "deutsch"]}


def hf_json(tmp_path) -> dict:
    path = write_lines(tmp_path / "h.jsonl", ['{"en": "a", "de": "b"}'])
    return {"type": "hf", "name": "json", "data_files": path, "columns": ["en", "deutsch"]}


CASES = {
    "line_counts": (lambda t: pair(t, ["a", "b", "c"], ["x", "y"]),
                    "line counts differ: {t}/a.en has 3 lines, {t}/a.de has 2"),
    "undecodable": (bad_bytes, "{t}/a.en: line 2: invalid UTF-8 (byte 0xe9"),
    "tsv_columns": (lambda t: {"type": "tsv", "path": write_lines(t / "c.tsv", ["a\tb", "only one"])},
                    "{t}/c.tsv: line 2: expected at least 2 tab-separated columns, found 1"),
    "jsonl_key": (lambda t: {"type": "jsonl", "path": write_lines(t / "d.jsonl", ['{"src": "a"}'])},
                  "{t}/d.jsonl: line 1: missing key 'tgt'"),
    "jsonl_syntax": (lambda t: {"type": "jsonl", "path": write_lines(t / "d.jsonl", ["{oops"])},
                     "{t}/d.jsonl: line 1: invalid JSON"),
    "missing_file": (lambda t: {"type": "pair", "src": str(t / "nope.en"), "tgt": str(t / "nope.de")},
                     "{t}/nope.en: file not found"),
    "hf_disk_column": (hf_disk, "{t}/ds: unknown column 'deutsch' (columns: en, de)"),
    "hf_column": (hf_json, "hf dataset 'json': unknown column 'deutsch' (columns: en, de)"),
    "hf_translation": (lambda t: {**hf_json(t), "columns": None, "translation": "tr"},
                       "hf dataset 'json': unknown column 'tr' (columns: en, de)"),
    "empty_after_filtering": (lambda t: pair(t, ["", "  ", "a"], ["x", "y", "\t"]),
                              "train: no pairs left after filtering (3 pairs read; empty 3)"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    make_source, expected = CASES[case]
    done = run_cli(tmp_path, config(tmp_path, make_source(tmp_path)))
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected.format(t=tmp_path) in errors[0]
    assert not (tmp_path / "run").exists()


def test_vocabulary_too_large_says_what_to_set(tmp_path, data_dir):
    en, de = (
        head(data_dir / "multi30k/train.en.gz", 300),
        head(data_dir / "multi30k/train.de.gz", 300),
    )
    cfg = config(tmp_path, pair(tmp_path, en, de), valid_size=10)
    cfg["tokenizer"]["vocab_size"] = 20000
    done = run_cli(tmp_path, cfg)
    assert done.returncode == 2
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "tokenizer.vocab_size=20000" in error and "--set tokenizer.vocab_size=" in error
    assert not (tmp_path / "run").exists()


def test_carving_more_than_train_holds_is_an_error(tmp_path):
    cfg = config(
        tmp_path, pair(tmp_path, ["a b", "c d", "e f"], ["g h", "i j", "k l"]), valid_size=5
    )
    done = run_cli(tmp_path, cfg)
    assert done.returncode == 2 and "data.valid_size=5" in done.stderr


# ----------------------------------------------------------------------------- pure pieces


def test_clean_text():
    assert clean_text("  Cafe\u0301\t au\u00a0lait \r") == "Caf\u00e9 au lait"
    assert clean_text("zero\u200bwidth\x00") == "zerowidth"
    assert clean_text(" \t\u3000") == ""
    assert pair_reason("a", "", 10) == "empty" and pair_reason("abc", "b", 2) == "max_chars"
    assert pair_reason("abc", "b", None) is None


def carve(sources: list[str], valid: int, test: int, seed: int) -> np.ndarray:
    splitter = GroupSplitter(valid, test)
    for line, src in enumerate(sources):
        splitter.add(stable_hash(src, seed), line)
    codes = np.full(len(sources), TRAIN, dtype=np.uint8)
    splitter.assign(codes)
    return codes


def test_group_splitter_keeps_groups_whole_and_ignores_order():
    rng = np.random.default_rng(0)
    sources = [f"sentence {i}" for i in rng.integers(0, 4000, size=20000)]  # ~5 pairs a source
    codes = carve(sources, 100, 50, seed=3)
    assert (codes == VALID).sum() == 100 and (codes == TEST).sum() == 50
    by_source = {}
    for s, c in zip(sources, codes.tolist()):
        by_source.setdefault(s, set()).add(c)
    assert all(len(c) == 1 for c in by_source.values())  # no source straddles two splits
    perm = rng.permutation(len(sources))
    assert (carve([sources[i] for i in perm], 100, 50, seed=3) == codes[perm]).all()
    assert (carve(sources, 100, 50, seed=4) != codes).any()
    assert (carve(sources, 0, 0, seed=3) == TRAIN).all()
    # It remembers only about 4 x (valid + test) pairs, however long the stream.
    splitter = GroupSplitter(10, 10)
    for line, src in enumerate(sources):
        splitter.add(stable_hash(src, 1), line)
    assert 80 <= splitter.held < 100


def test_readers_handle_gzip_bom_and_crlf(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress("\ufeffone\r\ntwo\n\nthree".encode()))
    assert list(read_lines(str(path))) == ["one", "two", "", "three"]
    src = write_lines(tmp_path / "a.en", ["a", "b"])
    tgt = write_lines(tmp_path / "a.de", ["x"])
    with pytest.raises(MtcliError, match="a.en has 2 lines, .*a.de has 1"):
        list(read_pair(PairSource(src=src, tgt=tgt)))


def test_split_writer_batches_round_trip(tmp_path):
    writer = SplitWriter(tmp_path / "s", np.uint16)
    writer.add([5, 6, 7])
    writer.add_batch([[8], [], [9, 10]])
    writer.add(np.array([11], dtype=np.int64))
    assert writer.close() == 5 and writer.tokens == 7
    split = Split(tmp_path / "s", "uint16")
    assert [split[i].tolist() for i in range(len(split))] == [[5, 6, 7], [8], [], [9, 10], [11]]


def test_missing_shipped_corpus_says_where_to_get_it(tmp_path, monkeypatch):
    import subprocess
    import sys

    from prepare_helpers import REPO

    env = {"MTCLI_DATA": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "mtcli", "prepare", "configs/demo.yaml", "--set", f"run_dir={tmp_path}/r"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "eng-fra.tsv.gz: file not found" in lines[0]
    assert "data/README.md" in lines[0] and str(tmp_path / "nowhere") in lines[0]
    assert not (tmp_path / "r").exists()
