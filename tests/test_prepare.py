"""`mtcli prepare` end to end: every source type, the grouped split, filters, outputs,
atomicity and idempotence. Bad input through the CLI is in test_prepare_errors.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from prepare_helpers import (
    REPO,
    head,
    make_config,
    multi30k_pair,
    tatoeba_tsv,
    write_lines,
)

import mtcli.data.prepare as prepare_module
from mtcli.config import load_config
from mtcli.data.clean import clean_text, unpunctuated_copies
from mtcli.data.freshness import clean_leftovers
from mtcli.data.manifest import SPECIAL
from mtcli.data.prepare import run_prepare
from mtcli.data.splits import load_pair
from mtcli.data.spm import Tokenizer
from mtcli.files import LOCK_NAME, OLD_TAG, TMP_TAG

SPLITS = ("train", "valid", "test")


def cleaned(lines) -> list[str]:
    return [clean_text(line) for line in lines]


def read_text(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def check_outputs(cfg, manifest: dict) -> None:
    """The output contract: files, manifest keys, and binarized rows that match the manifest."""
    data_dir = cfg.run_path / "data"
    for key in ("fingerprint", "dtype", "vocab", "splits", "filters", "inputs", "versions"):
        assert key in manifest
    assert manifest["src_lang"] == cfg.data.src_lang and manifest["tgt_lang"] == cfg.data.tgt_lang
    assert json.loads((data_dir / "manifest.json").read_text()) == manifest
    tok = Tokenizer(data_dir)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == tuple(SPECIAL.values())
    assert tok.src_vocab_size == manifest["vocab"]["src_size"]
    assert tok.tgt_vocab_size == manifest["vocab"]["tgt_size"]
    for split, stats in manifest["splits"].items():
        src, tgt = load_pair(data_dir, split, manifest["dtype"])
        assert len(src) == len(tgt) == stats["pairs"] > 0
        assert int(src.lengths.sum()) == stats["src_tokens"]
        assert int(tgt.lengths.sum()) == stats["tgt_tokens"]
        ids = np.asarray(src.ids)
        assert ids.max() < manifest["vocab"]["src_size"]
        assert not np.isin(ids, [SPECIAL["pad_id"], SPECIAL["bos_id"], SPECIAL["eos_id"]]).any()
        if split != "train":
            text = read_text(data_dir / f"{split}.src.txt")
            assert len(text) == len(read_text(data_dir / f"{split}.tgt.txt")) == stats["pairs"]
            assert tok.src.decode(src[0].tolist()) == text[0]  # same order as the rows
    carved = sum(
        s["pairs"] for s in manifest["splits"].values() if s["source"] == "carved from train"
    )
    for split, stats in manifest["splits"].items():
        dropped = sum(manifest["filters"][split].values())
        if stats["source"] == split:  # read = kept + dropped (+ carved out - added, for train)
            extra = carved - manifest["augmented"]["strip_punct"] if split == "train" else 0
            assert stats["read"] == stats["pairs"] + dropped + extra


# ----------------------------------------------------------------------------- source types


def test_pair_source_plain_and_gz_with_tiny_config(tmp_path, data_dir):
    cfg = make_config(
        tmp_path,
        {
            "train": multi30k_pair(data_dir, tmp_path, "train", 1500, gz=True),
            "valid": multi30k_pair(data_dir, tmp_path, "val", 150),
            "test": multi30k_pair(data_dir, tmp_path, "test_2016_flickr", 150, gz=True),
        },
    )
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    assert manifest["dtype"] == "uint16" and manifest["vocab"]["joint"]
    assert {s: m["read"] for s, m in manifest["splits"].items()} == {
        "train": 1500,
        "valid": 150,
        "test": 150,
    }
    assert {r["lines"] for r in manifest["inputs"]} == {1500, 150}
    assert all(len(r["sha256"]) == 64 for r in manifest["inputs"])
    assert set(manifest["versions"]) >= {"mtcli", "sentencepiece", "datasets", "python"}
    assert manifest["splits"]["train"]["src_len"]["max"] <= cfg.data.filters.max_tokens
    # valid/test are kept whole (references for BLEU) in the same order as the corpus
    assert read_text(cfg.run_path / "data/valid.src.txt") == head(
        data_dir / "multi30k/val.en.gz", 150
    )


def test_tiny_config_max_train_pairs(tmp_path, data_dir):
    cfg = load_config(REPO / "configs/tiny.yaml", [f"run_dir={tmp_path / 'tiny'}"])
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    assert manifest["splits"]["train"]["read"] == 2000
    assert manifest["splits"]["valid"]["read"] == 1014  # an own valid source is used whole


def test_tsv_source_chooses_columns(tmp_path, data_dir):
    en = head(data_dir / "multi30k/train.en.gz", 800)
    de = head(data_dir / "multi30k/train.de.gz", 800)
    tsv = write_lines(
        tmp_path / "c.tsv.gz", [f"{i}\t{d}\t{e}" for i, (e, d) in enumerate(zip(en, de))], gz=True
    )
    cfg = make_config(tmp_path, {"train": {"type": "tsv", "path": tsv, "columns": [2, 1]},
                                 "valid_size": 50, "test_size": 0})  # fmt: skip
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    assert set(manifest["splits"]) == {"train", "valid"}  # no test source and test_size 0
    assert not (cfg.run_path / "data/test.src.bin").exists()
    assert set(read_text(cfg.run_path / "data/valid.src.txt")) <= set(cleaned(en))


def test_jsonl_source_with_nested_keys(tmp_path, data_dir):
    en = head(data_dir / "multi30k/train.en.gz", 800)
    de = head(data_dir / "multi30k/train.de.gz", 800)
    rows = [json.dumps({"id": i, "t": {"en": e, "de": d}}) for i, (e, d) in enumerate(zip(en, de))]
    path = write_lines(tmp_path / "c.jsonl", rows)
    cfg = make_config(
        tmp_path,
        {"train": {"type": "jsonl", "path": path, "keys": ["t.en", "t.de"]}, "valid_size": 50, "test_size": 50},
    )
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    assert set(read_text(cfg.run_path / "data/test.tgt.txt")) <= set(cleaned(de))


def test_hf_json_builder_translation_column_and_separate_vocab(tmp_path, data_dir, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    lines = head(data_dir / "tatoeba-en-fr/eng-fra.tsv.gz", 1500)
    rows = [
        json.dumps({"translation": dict(zip(("en", "fr"), line.split("\t")))}) for line in lines
    ]
    path = write_lines(tmp_path / "t.jsonl", rows)
    cfg = make_config(
        tmp_path,
        {"tgt_lang": "fr", "train": {"type": "hf", "name": "json", "data_files": path},
         "valid_size": 60, "test_size": 60},
        tokenizer={"type": "bpe", "vocab_size": 300, "joint": False},
    )  # fmt: skip
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    data = cfg.run_path / "data"
    assert (data / "spm.src.model").exists() and (data / "spm.tgt.model").exists()
    assert not (data / "spm.model").exists()
    vocab = manifest["vocab"]
    assert (vocab["type"], vocab["joint"], vocab["src_size"], vocab["tgt_size"]) == (
        "bpe",
        False,
        300,
        300,
    )
    assert manifest["inputs"][0]["path"] == path
    french = set(cleaned(line.split("\t")[1] for line in lines))
    assert set(read_text(data / "valid.tgt.txt")) <= french


def test_hf_disk_flat_columns_and_dataset_dict(tmp_path, data_dir):
    from datasets import Dataset, DatasetDict

    en = head(data_dir / "multi30k/train.en.gz", 600)
    de = head(data_dir / "multi30k/train.de.gz", 600)
    Dataset.from_dict({"english": en, "german": de}).save_to_disk(str(tmp_path / "flat"))
    cfg = make_config(tmp_path, {
        "train": {"type": "hf_disk", "path": str(tmp_path / "flat"), "columns": ["english", "german"]},
        "valid_size": 40, "test_size": 40,
    })  # fmt: skip
    check_outputs(cfg, run_prepare(cfg))

    # A DatasetDict with a `translation` column: train and valid from its splits.
    trans = [{"en": e, "de": d} for e, d in zip(en, de)]
    dd = DatasetDict({"train": Dataset.from_dict({"translation": trans[:500]}),
                      "validation": Dataset.from_dict({"translation": trans[500:]})})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "dict"))
    src = {"type": "hf_disk", "path": str(tmp_path / "dict")}
    cfg = make_config(tmp_path, {"train": {**src, "split": "train"}, "valid": {**src, "split": "validation"},
                                 "test_size": 0}, name="dict")  # fmt: skip
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    assert manifest["splits"]["valid"]["pairs"] == 100
    assert read_text(cfg.run_path / "data/valid.src.txt") == cleaned(en[500:])


# ----------------------------------------------------------------------------- grouped split


def train_sources(cfg, manifest) -> set[str]:
    """Decoded train source sentences (Tatoeba's English is ASCII, so decoding is exact)."""
    tok = Tokenizer(cfg.run_path / "data")
    src, _ = load_pair(cfg.run_path / "data", "train", manifest["dtype"])
    return set(tok.src.decode([src[i].tolist() for i in range(len(src))]))


def test_grouped_split_has_no_leakage_and_is_seeded(tmp_path, data_dir):
    source = tatoeba_tsv(data_dir, tmp_path, 4000)
    lines = head(data_dir / "tatoeba-en-fr/eng-fra.tsv.gz", 4000)
    repeated = {en for en in (line.split("\t")[0] for line in lines)}
    assert len(repeated) < 3000  # the slice really has English sentences with several translations

    def prepare(name, seed):
        data = {
            "tgt_lang": "fr",
            "train": source,
            "valid_size": 300,
            "test_size": 300,
            "split_seed": seed,
        }
        cfg = make_config(tmp_path, data, name=name)
        return cfg, run_prepare(cfg)

    cfg, manifest = prepare("a", 7)
    check_outputs(cfg, manifest)
    data = cfg.run_path / "data"
    valid, test = read_text(data / "valid.src.txt"), read_text(data / "test.src.txt")
    assert len(valid) == 300 and len(test) == 300
    assert max(valid.count(s) for s in valid) > 1  # whole groups moved, not single pairs
    train = train_sources(cfg, manifest)
    assert not (set(valid) | set(test)) & train
    assert not set(valid) & set(test)
    en_of = {}
    for line in lines:
        en, fr = line.split("\t")
        en_of.setdefault(clean_text(en), set()).add(clean_text(fr))
    for en, fr in zip(valid, read_text(data / "valid.tgt.txt")):
        assert fr in en_of[en]  # pairs stay aligned

    cfg_b, _ = prepare("b", 7)
    assert read_text(cfg_b.run_path / "data/valid.src.txt") == valid
    assert read_text(cfg_b.run_path / "data/test.tgt.txt") == read_text(data / "test.tgt.txt")
    cfg_c, _ = prepare("c", 8)
    assert read_text(cfg_c.run_path / "data/valid.src.txt") != valid


# ----------------------------------------------------------------------------- filters


def test_each_filter_is_counted_by_reason(tmp_path, data_dir):
    en = head(data_dir / "multi30k/train.en.gz", 600)
    de = head(data_dir / "multi30k/train.de.gz", 600)
    long, long_valid = " ".join(["word"] * 150), " ".join(["thing"] * 150)  # < max_chars
    extra = [
        ("", "Leer."), ("Empty target.", "   "),  # empty (x2)
        ("x" * 900, "zu lang"),  # max_chars
        (en[100], de[100]), (en[101], de[101]),  # duplicate (x2)
        (long, long),  # max_tokens
        ("a b c d e f g h i j k l m n o p", "Hallo."),  # ratio
    ]  # fmt: skip
    src = write_lines(tmp_path / "c.en", en + [e for e, _ in extra])
    tgt = write_lines(tmp_path / "c.de", de + [d for _, d in extra])
    # The valid source repeats the first 20 train sources (eval_overlap), has an empty side and a
    # long pair: valid keeps the long pair, its references stay whole.
    valid = {"type": "pair", "src": write_lines(tmp_path / "v.en", en[:20] + ["", long_valid]),
             "tgt": write_lines(tmp_path / "v.de", de[:20] + ["Leer.", long_valid])}  # fmt: skip
    filters = {"max_chars": 800, "max_tokens": 120, "max_ratio": 2.5}
    data = {"train": {"type": "pair", "src": src, "tgt": tgt}, "valid": valid, "test_size": 0,
            "filters": filters}  # fmt: skip
    cfg = make_config(tmp_path, data)
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)

    valid_sources = set(en[:20])
    overlap = sum(e in valid_sources for e in en)
    rest = [(e, d) for e, d in zip(en, de) if e not in valid_sources] + extra[3:5]
    found = manifest["filters"]["train"]
    assert (found["empty"], found["max_chars"], found["eval_overlap"]) == (2, 1, overlap)
    assert found["duplicate"] == len(rest) - len(set(rest)) >= 2
    assert found["max_tokens"] >= 1 and found["ratio"] >= 1
    assert long not in train_sources(cfg, manifest)
    counts = manifest["counts"]["train"]
    assert list(counts) == [
        "read",
        "empty",
        "max_chars",
        "eval_overlap",
        "duplicate",
        "max_tokens",
        "ratio",
    ]
    assert counts["read"] == len(en) + len(extra)
    assert counts["ratio"] == manifest["splits"]["train"]["pairs"]
    assert manifest["filters"]["valid"] == {"empty": 1}
    assert read_text(cfg.run_path / "data/valid.src.txt") == en[:20] + [long_valid]

    # Switching dedup and the overlap removal off keeps those pairs.
    off = {**filters, "dedup": False, "remove_eval_overlap": False}
    kept = run_prepare(make_config(tmp_path, {**data, "filters": off}, name="keep"))
    assert set(kept["filters"]["train"]) == {"empty", "max_chars", "max_tokens", "ratio"}
    before_tokens = manifest["counts"]["train"]["duplicate"] + overlap + found["duplicate"]
    assert kept["counts"]["train"]["max_chars"] == before_tokens


def test_cleanup_normalizes_unicode_and_whitespace(tmp_path, data_dir):
    en = head(data_dir / "multi30k/train.en.gz", 400)
    de = head(data_dir / "multi30k/train.de.gz", 400)
    val_en = ["  Cafe\u0301 \t au\u00a0lait\r", "Two  spaces"]
    val_de = ["Kaffee\u200b mit Milch", "Zwei Leerzeichen"]
    valid = {"type": "pair", "src": write_lines(tmp_path / "v.en", val_en),
             "tgt": write_lines(tmp_path / "v.de", val_de)}  # fmt: skip
    train = {
        "type": "pair",
        "src": write_lines(tmp_path / "t.en", en),
        "tgt": write_lines(tmp_path / "t.de", de),
    }
    cfg = make_config(tmp_path, {"train": train, "valid": valid, "test_size": 0})
    run_prepare(cfg)
    data = cfg.run_path / "data"
    assert read_text(data / "valid.src.txt") == ["Caf\u00e9 au lait", "Two spaces"]
    assert read_text(data / "valid.tgt.txt") == ["Kaffee mit Milch", "Zwei Leerzeichen"]


# ----------------------------------------------------------------------------- atomic, idempotent


def small_config(tmp_path, data_dir, **data):
    return make_config(tmp_path, {"train": multi30k_pair(data_dir, tmp_path, "train", 800),
                                  "valid_size": 50, "test_size": 50, **data})  # fmt: skip


def snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


class Boom(RuntimeError):
    pass


def fail_during_encoding(monkeypatch):
    def add(self, *args):
        raise Boom("disk on fire")

    monkeypatch.setattr(prepare_module.Binarizer, "add", add)


def test_failure_midway_leaves_nothing_or_the_previous_result(tmp_path, data_dir, monkeypatch):
    cfg = small_config(tmp_path, data_dir)
    with monkeypatch.context() as patch:
        fail_during_encoding(patch)
        with pytest.raises(Boom):
            run_prepare(cfg)
    assert not cfg.run_path.exists()  # nothing written at all

    manifest = run_prepare(cfg)
    before = snapshot(cfg.run_path / "data")
    with monkeypatch.context() as patch:
        fail_during_encoding(patch)
        with pytest.raises(Boom):
            run_prepare(cfg, force=True)
    assert snapshot(cfg.run_path / "data") == before
    assert sorted(p.name for p in cfg.run_path.iterdir()) == [LOCK_NAME, "data"]  # no temp dir left behind
    assert run_prepare(cfg) == manifest  # and it is still current


def test_killed_between_renames_restores_the_old_data(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir)
    manifest = run_prepare(cfg)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    os.replace(cfg.run_path / "data", cfg.run_path / f".data.old-{dead}")
    (cfg.run_path / f".data.tmp-{dead}").mkdir()  # a half-built directory of the killed run
    clean_leftovers(cfg.run_path)
    assert sorted(p.name for p in cfg.run_path.iterdir()) == [LOCK_NAME, "data"]
    assert run_prepare(cfg) == manifest

    # Today's names: the sweep at the start of prepare undoes the same interrupted swap.
    os.replace(cfg.run_path / "data", cfg.run_path / f".data{OLD_TAG}{dead}-0a1b2c3d")
    (cfg.run_path / f".data{TMP_TAG}{dead}-4e5f6a7b").mkdir()
    assert run_prepare(cfg) == manifest
    assert sorted(p.name for p in cfg.run_path.iterdir()) == [LOCK_NAME, "data"]


def test_idempotent_unless_inputs_or_config_change(tmp_path, data_dir, capsys):
    cfg = small_config(tmp_path, data_dir)
    first = run_prepare(cfg)
    before = snapshot(cfg.run_path / "data")
    capsys.readouterr()

    assert run_prepare(cfg) == first
    assert "up to date" in capsys.readouterr().err
    assert snapshot(cfg.run_path / "data") == before

    src = cfg.data.train.src
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))  # touched, same bytes: still current
    again = run_prepare(cfg)
    assert again["fingerprint"] == first["fingerprint"] and "up to date" in capsys.readouterr().err
    assert again["inputs"][0]["mtime_ns"] == 1_000_000_000  # cached for the next cheap check

    forced = run_prepare(cfg, force=True)
    assert "up to date" not in capsys.readouterr().err
    assert forced["fingerprint"] == first["fingerprint"] and forced["splits"] == first["splits"]

    bigger = make_config(tmp_path, {**cfg.data.model_dump(), "train": cfg.data.train.model_dump()},
                         tokenizer={"type": "unigram", "vocab_size": 250, "joint": True})  # fmt: skip
    assert run_prepare(bigger)["vocab"]["src_size"] == 250

    with (
        open(src, "a", encoding="utf-8") as f,
        open(cfg.data.train.tgt, "a", encoding="utf-8") as g,
    ):
        f.write("A new sentence.\n")
        g.write("Ein neuer Satz.\n")
    changed = run_prepare(cfg)
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["splits"]["train"]["read"] == first["splits"]["train"]["read"] + 1


def test_cli_prepare_prints_summary_and_up_to_date(tmp_path, data_dir):
    from prepare_helpers import run_cli

    raw = {"name": "cli", "run_dir": str(tmp_path / "run"),
           "data": {"src_lang": "en", "tgt_lang": "de",
                    "train": multi30k_pair(data_dir, tmp_path, "train", 500),
                    "valid_size": 30, "test_size": 30},
           "tokenizer": {"vocab_size": 200}}  # fmt: skip
    done = run_cli(tmp_path, raw)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # logs and progress go to stderr
    assert "train" in done.stderr and "vocabulary: joint unigram 200" in done.stderr
    again = run_cli(tmp_path, raw)
    assert again.returncode == 0 and "up to date" in again.stderr
    forced = run_cli(tmp_path, raw, "--force", "--set", "tokenizer.vocab_size=220")
    assert forced.returncode == 0 and "vocabulary: joint unigram 220" in forced.stderr


# ----------------------------------------------------------------------------- augmentation


def test_unpunctuated_copies_strip_both_sides_and_depend_only_on_the_pair():
    src = ["I love you.", "Where is the station?", "Hello", "Stop!", "Run."]
    tgt = ["Je t'aime.", "Où est la gare ?", "Bonjour.", "Arrête !", "Cours"]
    all_src, all_tgt = unpunctuated_copies(src, tgt, fraction=1.0, seed=1)
    # "Hello" and "Run." lack punctuation on one side, so they get no copy.
    assert list(zip(all_src, all_tgt)) == [
        ("I love you", "Je t'aime"), ("Where is the station", "Où est la gare"), ("Stop", "Arrête"),
    ]  # fmt: skip
    assert unpunctuated_copies(src, tgt, fraction=0.0, seed=1) == ([], [])
    # A fraction picks the same pairs whatever the order and chunking.
    many = [(f"Sentence number {i}.", f"Phrase numéro {i}.") for i in range(2000)]
    half = set(zip(*unpunctuated_copies(*zip(*many), fraction=0.3, seed=7)))
    rev = set(zip(*unpunctuated_copies(*zip(*many[::-1]), fraction=0.3, seed=7)))
    assert half == rev and 450 < len(half) < 750
    assert half != set(zip(*unpunctuated_copies(*zip(*many), fraction=0.3, seed=8)))


def test_strip_punct_adds_unpunctuated_train_pairs(tmp_path, data_dir):
    data = {"tgt_lang": "fr", "train": tatoeba_tsv(data_dir, tmp_path, 3000), "valid_size": 100,
            "test_size": 100}  # fmt: skip
    plain = run_prepare(make_config(tmp_path, data, name="plain"))
    cfg = make_config(tmp_path, {**data, "strip_punct": 0.5}, name="aug")
    manifest = run_prepare(cfg)
    check_outputs(cfg, manifest)
    added = manifest["augmented"]["strip_punct"]
    assert plain["augmented"]["strip_punct"] == 0 and added > 500
    assert manifest["counts"]["train"]["strip_punct"] == manifest["counts"]["train"]["carve_test"] + added
    train_pairs = manifest["splits"]["train"]["pairs"]
    assert plain["splits"]["train"]["pairs"] < train_pairs <= plain["splits"]["train"]["pairs"] + added
    # Valid and test keep their punctuation; the added train sources really lack it.
    assert manifest["splits"]["valid"]["pairs"] == plain["splits"]["valid"]["pairs"]
    tok = Tokenizer(cfg.run_path / "data")
    src, _ = load_pair(cfg.run_path / "data", "train", manifest["dtype"])
    last = [tok.src.decode(src[i].tolist()) for i in range(len(src) - 50, len(src))]
    assert sum(not s.endswith((".", "?", "!")) for s in last) >= 40
