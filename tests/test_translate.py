"""`mtcli translate` and `mtcli score --model` from the shell, on a tiny model trained on Multi30k."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, data_dir) -> Path:
    """A tiny model trained for a few steps (enough to produce non-empty output)."""
    run = tmp_path_factory.mktemp("translate") / "runs" / "tiny"
    env = {**os.environ, "MTCLI_DATA": str(data_dir)}
    out = subprocess.run([sys.executable, "-m", "mtcli", "train", str(TINY), "--set", f"run_dir={run}",
                          "--set", "train.max_steps=30", "--set", "train.eval_every=1000"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return run / "model"


@pytest.fixture(scope="session", params=["bundle", "ctranslate2"])
def model_dir(request, bundle, tmp_path_factory) -> Path:
    """What `translate --model` takes: the trained bundle, or its CTranslate2 export."""
    if request.param == "bundle":
        return bundle
    pytest.importorskip("ctranslate2")
    out = tmp_path_factory.mktemp("ct2") / "export"
    made = subprocess.run([sys.executable, "-m", "mtcli", "export", str(bundle), "--to", "ctranslate2", "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def translate(bundle, *args, input=None, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "mtcli", "translate", "-m", str(bundle), *args],
                          input=input, capture_output=True, cwd=cwd, env=env, timeout=300)


def test_line_alignment_and_edge_cases(model_dir):
    lines = ["A man is walking.", "", "   ", "Two dogs 🐕 play.", "שלום עולם", "e\u0301te\u0301 \x07 bell",
             "word " * 1100]
    out = translate(model_dir, "--beam", "2", input="\n".join(lines).encode() + b"\n")
    assert out.returncode == 0, out.stderr.decode()
    got = out.stdout.decode("utf-8").split("\n")
    assert len(got) == len(lines) + 1 and got[-1] == ""
    assert got[1] == "" and got[2] == ""
    assert b"truncated" not in out.stderr  # the 1,100-word line 7 is translated in parts
    # Every non-blank line gets a hypothesis of at least min_len (1) tokens. Its text may still be
    # empty: a barely trained model can emit a lone "▁" piece, which detokenizes to "".
    js = translate(model_dir, "--beam", "2", "--format", "jsonl", input="\n".join(lines).encode() + b"\n")
    rows = [json.loads(x) for x in js.stdout.decode("utf-8").splitlines()]
    assert [r["source"] for r in rows][:6] == lines[:6]
    assert all(rows[i]["hypotheses"][0]["tokens"] >= 1 for i in (0, 3, 4, 5, 6))
    assert rows[1]["hypotheses"] == [] and rows[2]["hypotheses"] == []


def test_input_and_output_files_and_jsonl_nbest(model_dir, tmp_path):
    src = tmp_path / "src.en"
    src.write_text("A dog runs.\n\nA girl sings.\n")
    dest = tmp_path / "out.de"
    out = translate(model_dir, "-i", str(src), "-o", str(dest))
    assert out.returncode == 0 and out.stdout == b""
    assert len(dest.read_text().split("\n")) == 4
    js = translate(model_dir, "-i", str(src), "--format", "jsonl", "--nbest", "3", "--beam", "3")
    rows = [json.loads(x) for x in js.stdout.decode().splitlines()]
    assert [r["source"] for r in rows] == ["A dog runs.", "", "A girl sings."]
    assert len(rows[0]["hypotheses"]) == 3 and rows[1]["hypotheses"] == []
    scores = [h["score"] for h in rows[0]["hypotheses"]]
    assert scores == sorted(scores, reverse=True)
    text = translate(model_dir, "-i", str(src), "--nbest", "2", "--beam", "2").stdout.decode().splitlines()
    assert text[0].startswith("0 ||| ") and len([t for t in text if t.startswith("2 ||| ")]) == 2


def test_arguments_beam_one_is_greedy_and_overrides(model_dir):
    a = translate(model_dir, "A dog.", "A cat.", "--beam", "1")
    assert a.returncode == 0 and len(a.stdout.decode().splitlines()) == 2
    long = translate(model_dir, "A dog.", "--set", "decode.min_len=15", "--set", "decode.max_len_b=15",
                     "--set", "decode.max_len_a=0", "--format", "jsonl")
    assert json.loads(long.stdout)["hypotheses"][0]["tokens"] == 15
    bad = translate(model_dir, "x", "--set", "model.d_model=3")
    assert bad.returncode == 2 and b"decode." in bad.stderr


def test_errors(model_dir, tmp_path):
    bad = translate(model_dir, input=b"fine\n\xff\xfe broken\n")
    assert bad.returncode == 2 and b"line 2" in bad.stderr and b"UTF-8" in bad.stderr
    missing = translate(tmp_path / "nope", "hello")
    assert missing.returncode == 2 and b"mtcli train" in missing.stderr and b"Traceback" not in missing.stderr
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.yaml").write_text("name: x\n")
    broken = translate(tmp_path / "fake", "hello")
    assert broken.returncode == 2 and b"model bundle" in broken.stderr
    no_file = translate(model_dir, "-i", str(tmp_path / "none.txt"))
    assert no_file.returncode == 2 and b"none.txt" in no_file.stderr


def test_default_model_from_env_and_stdin_streams(model_dir, tmp_path):
    env = {**os.environ, "MTCLI_MODEL": str(model_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "mtcli", "translate"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    proc.stdin.write(b"A man rides a bike.\n")
    proc.stdin.flush()
    # A watchdog closes stdin if no answer comes (a tool that waits for EOF would wait forever);
    # streaming means the first line is answered while stdin is still open.
    watchdog = threading.Timer(600, proc.stdin.close)
    watchdog.start()
    first = proc.stdout.readline()
    watchdog.cancel()
    assert first.strip() and not proc.stdin.closed, "the first line was answered only after stdin closed"
    proc.stdin.write(b"A woman.\n")
    proc.stdin.close()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0 and len(rest.splitlines()) == 1


def test_score_with_model_end_to_end(model_dir, tmp_path, data_dir):
    import gzip

    src, ref = tmp_path / "src.en", tmp_path / "ref.de"
    with gzip.open(data_dir / "multi30k" / "val.en.gz", "rt") as f:
        src.write_text("".join(f.readlines()[:20]))
    with gzip.open(data_dir / "multi30k" / "val.de.gz", "rt") as f:
        ref.write_text("".join(f.readlines()[:20]))
    out = subprocess.run([sys.executable, "-m", "mtcli", "score", "--model", str(model_dir), "--src", str(src),
                          str(ref), "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    hyp = translate(model_dir, "-i", str(src)).stdout.decode().splitlines()
    import sacrebleu

    expected = sacrebleu.corpus_bleu(hyp, [ref.read_text().splitlines()]).score
    assert result["n_lines"] == 20 and result["scores"]["bleu"]["score"] == pytest.approx(expected)


def test_int8_flag_runs_the_int8_model_close_to_float32(model_dir, tmp_path, data_dir):
    """--int8 is applied (the scores change: int8 weights) and stays close to float32 on real
    sentences (per-token log-probability within 0.1 on average; 0.013 seen here)."""
    import gzip

    src = tmp_path / "src.en"
    with gzip.open(data_dir / "multi30k" / "val.en.gz", "rt") as f:
        src.write_text("".join(f.readlines()[:40]))
    runs = [translate(model_dir, "-i", str(src), "--beam", "2", "--format", "jsonl", *flag) for flag in ([], ["--int8"])]
    assert all(r.returncode == 0 for r in runs), runs[1].stderr.decode()
    full, int8 = ([json.loads(line)["hypotheses"][0] for line in r.stdout.decode().splitlines()] for r in runs)
    assert len(full) == len(int8) == 40 and all(h["text"] for h in int8)
    per_token = [abs(a["logprob"] / (a["tokens"] + 1) - b["logprob"] / (b["tokens"] + 1)) for a, b in zip(full, int8)]
    assert max(per_token) > 0 and sum(per_token) / len(per_token) < 0.1


@pytest.mark.parametrize("beam", [1, 4])
def test_cpu_fast_path_is_default_and_translates_the_same(bundle, monkeypatch, beam):
    import mtcli.inference.fastpaths as fastlinear
    from mtcli.inference.translator import load_translator

    lines = ["A man is walking.", "Two dogs play in the snow.", "", "A girl with a red hat sings a song."]
    monkeypatch.delenv(fastlinear.ENV, raising=False)  # the default, whatever the suite runs with
    fast = load_translator(bundle, beam=beam, nbest=beam, device="cpu")
    monkeypatch.setenv(fastlinear.ENV, "0")
    plain = load_translator(bundle, beam=beam, nbest=beam, device="cpu")
    assert fastlinear.packed_count(plain.model) == 0
    if fastlinear.available():
        assert fastlinear.packed_count(fast.model) > 0
    got, ref = fast.translate(lines), plain.translate(lines)
    texts = [[(h["text"], h["tokens"]) for h in hs] for hs in got]
    assert texts == [[(h["text"], h["tokens"]) for h in hs] for hs in ref]
    for a, b in zip(got, ref):
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=2e-4)


def test_bf16_translation_and_its_errors(model_dir, tmp_path):
    import mtcli.inference.fastpaths as fastlinear

    src = tmp_path / "src.en"
    src.write_text("A man is walking.\n\nTwo dogs play in the snow.\nA girl with a red hat.\n")
    bf = translate(model_dir, "-i", str(src), "--beam", "2", "--bf16")
    assert bf.returncode == 0, bf.stderr.decode()
    lines = bf.stdout.decode().split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[-1] == "" and all(lines[i] for i in (0, 2, 3))
    if (model_dir / "mtcli-export.json").exists():  # a CTranslate2 export: CTranslate2 decides
        import ctranslate2

        fallback = "bfloat16" not in ctranslate2.get_supported_compute_types("cpu")
    else:
        fallback = not (fastlinear.enabled() and fastlinear.bf16_supported())
    assert (b"decode.bf16" in bf.stderr) == fallback  # warned only on fallback
    both = translate(model_dir, "-i", str(src), "--bf16", "--int8")
    assert both.returncode != 0 and both.stdout == b""
    assert b"decode.int8 and decode.bf16" in both.stderr and len(both.stderr.decode().strip().splitlines()) == 1


def test_bf16_packs_bfloat16_or_warns(bundle, monkeypatch):
    import torch

    import mtcli.inference.fastpaths as fastlinear
    from mtcli.inference.bundle import load_bundle
    from mtcli.inference.translator import inference_model, load_translator

    def dtypes(net):
        return {m.dtype for m in net.modules() if isinstance(m, fastlinear.PackedLinear)}

    monkeypatch.delenv(fastlinear.ENV, raising=False)  # the default, whatever the suite runs with

    if fastlinear.bf16_supported():
        assert dtypes(load_translator(bundle, device="cpu", bf16=True).model) == {torch.bfloat16}
    monkeypatch.setattr(fastlinear, "bf16_supported", lambda: False)
    warned = []
    net = inference_model(load_bundle(bundle, "cpu")[0], "cpu", bf16=True, warn=warned.append)
    assert len(warned) == 1 and "AVX512-BF16" in warned[0]
    assert dtypes(net) <= {torch.float32}  # float32 packed, or plain where oneDNN is missing


def test_int8_is_not_packed(bundle):
    from mtcli.inference.fastpaths import packed_count
    from mtcli.inference.translator import load_translator

    q = load_translator(bundle, device="cpu", int8=True)
    assert packed_count(q.model) == 0
    assert any("quantized" in type(m).__module__ for m in q.model.modules())


def test_parallel_map_runs_workers_concurrently_in_order():
    import threading

    import torch

    from mtcli.inference.translator import parallel_map

    total = torch.get_num_threads()
    barrier = threading.Barrier(2, timeout=30)  # passes only if two items run at the same time
    seen = []

    def fn(x):
        barrier.wait()
        seen.append(torch.get_num_threads())
        return x * 10

    assert list(parallel_map(fn, [1, 2, 3, 4], workers=2)) == [10, 20, 30, 40]
    assert seen == [max(1, total // 2)] * 4
    assert torch.get_num_threads() == total
    assert list(parallel_map(lambda x: x + 1, [1, 2], workers=1)) == [2, 3]


def test_workers_translate_the_same_in_input_order(bundle, tmp_path, monkeypatch):
    from mtcli.inference.translator import load_translator

    lines = ["A man is walking.", "Two dogs play in the snow.", "", "A girl with a red hat sings a song.",
             "People sit on a bench.", "A boy jumps.", "Three women wait for the bus in the rain."]
    one = load_translator(bundle, beam=3, nbest=2, device="cpu", overrides=["decode.max_tokens=24", "decode.workers=1"])
    two = load_translator(bundle, beam=3, nbest=2, device="cpu",
                          overrides=["decode.max_tokens=24", "decode.workers=2"])
    import mtcli.inference.search as search

    expected = one.translate(lines)
    batches, real = [], search.beam_search
    monkeypatch.setattr(search, "beam_search", lambda m, src, p: batches.append(len(src)) or real(m, src, p))
    assert two.workers == 2 and two.translate(lines) == expected
    assert len(batches) >= 4 and sum(batches) == 6  # several batches of the 6 non-empty lines
    src = tmp_path / "src.en"
    src.write_text("\n".join(lines) + "\n")
    cli = translate(bundle, "-i", str(src), "--beam", "3", "--set", "decode.workers=2", "--set", "decode.max_tokens=24")
    assert cli.returncode == 0, cli.stderr.decode()
    assert cli.stdout.decode().splitlines() == [h[0]["text"] if h else "" for h in one.translate(lines)]


def test_split_long_cuts_before_words_and_keeps_every_id():
    from mtcli.inference.translator import split_long

    seq = list(range(100))
    starts = {0, 10, 20, 35, 47, 80, 95}
    parts = split_long(seq, 40, starts)
    assert [p[0] for p in parts] == [0, 35, 75] and sum(parts, []) == seq  # 75: no word start in 56..75
    assert all(len(p) <= 40 for p in parts)
    assert split_long(seq, 40) == [seq[:40], seq[40:80], seq[80:]]  # no word starts: at the limit
    assert split_long([], 40) == [] and split_long([1, 2], 40) == [[1, 2]]


def test_a_line_longer_than_the_model_reads_is_translated_in_parts(bundle):
    from mtcli.data.batching import pad_batch
    from mtcli.inference.search import beam_search
    from mtcli.inference.translator import load_translator

    tr = load_translator(bundle, beam=1)
    long = " ".join(["A dog runs through the green park."] * 200)
    parts = tr.encode([long])[0]
    assert len(parts) >= 2 and all(len(p) <= tr.max_src for p in parts)
    assert sum(parts, []) == tr.tok.encode_src([long])[0]
    assert all(p[0] in tr.tok.src_word_starts() for p in parts)
    hyp = tr.translate([long])[0][0]
    each = [beam_search(tr.model, pad_batch([p], tr.params.pad_id, suffix=tr.params.eos_id), tr.params)[0][0]
            for p in parts]  # fmt: skip
    assert hyp["tokens"] == sum(len(h.tokens) for h in each)
    assert hyp["text"] == " ".join(tr.tok.decode_tgt([h.tokens for h in each]))
