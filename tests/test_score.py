"""`mtcli score` on the real Multi30k test2016 files: sacreBLEU's numbers, signatures, exit codes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.utils import smart_open

from mtcli.errors import MtcliError
from mtcli.score import Result, print_table, split_lines

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "de", "fr")


def mtcli_score(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mtcli", "score", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=REPO)


def perturb(lines: list[str]) -> list[str]:
    """Drop every 7th word (counted over the whole file) and lowercase every 3rd line."""
    out, n = [], 0
    for i, line in enumerate(lines):
        words = []
        for word in line.split(" "):
            n += 1
            if n % 7:
                words.append(word)
        text = " ".join(words)
        out.append(text.lower() if i % 3 == 0 else text)
    return out


@pytest.fixture
def corpus(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Plain copies of test2016 {en,de,fr}, a perturbed German copy, and the .gz originals."""
    files: dict[str, Path] = {}
    for lang in LANGS:
        gz = data_dir / "multi30k" / f"test_2016_flickr.{lang}.gz"
        files[f"{lang}.gz"] = gz
        files[lang] = tmp_path / f"test2016.{lang}"
        files[lang].write_bytes(gzip.decompress(gz.read_bytes()))
    files["pert"] = tmp_path / "test2016.pert.de"
    files["pert"].write_text("\n".join(perturb(lines(files["de"]))) + "\n", encoding="utf-8")
    return files


def lines(path: Path) -> list[str]:
    """A file's segments as sacreBLEU's command line reads them."""
    with smart_open(str(path)) as fh:
        return [line.rstrip() for line in fh]


def expected(hyp: Path, refs: list[Path], key: str, opts: dict, n_bootstrap: int = 1):
    """(score, signature) computed independently with the sacrebleu API."""
    if key == "bleu":
        metric = BLEU(tokenize=opts.get("tokenize"), lowercase=opts.get("lowercase", False))
    elif key == "chrf":
        metric = CHRF(word_order=opts.get("word_order", 0), lowercase=opts.get("lowercase", False))
    else:
        metric = TER()
    score = metric.corpus_score(lines(hyp), [lines(r) for r in refs], n_bootstrap=n_bootstrap)
    return score, metric.get_signature().format()


def as_sacrebleu_line(line: str) -> str:
    """Turn mtcli's `NAME = REST  SIG` into sacreBLEU's text format `NAME|SIG = REST`."""
    name, rest = line.split(" = ", 1)
    rest, sig = rest.rsplit("  ", 1)
    return f"{name}|{sig} = {rest}"


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "hyp, refs",
    [("de", ["de"]), ("fr", ["de"]), ("pert", ["de"]), ("de.gz", ["de.gz"]), ("pert", ["de", "en", "fr"])],
)
def test_json_equals_sacrebleu_api(corpus, hyp, refs):
    proc = mtcli_score(corpus[hyp], *[corpus[r] for r in refs], "--json", "-M", "bleu", "-M", "chrf", "-M", "ter")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_lines"] == 1000 and out["hyp"] == str(corpus[hyp])
    assert out["refs"] == [str(corpus[r]) for r in refs]
    for key in ("bleu", "chrf", "ter"):
        score, sig = expected(corpus[hyp], [corpus[r] for r in refs], key, {})
        assert out["scores"][key]["score"] == score.score
        assert out["scores"][key]["signature"] == sig
        assert f"nrefs:{len(refs)}|" in sig
        if key == "bleu":
            assert out["scores"][key]["precisions"] == score.precisions
    if hyp.startswith("de") and refs[0].startswith("de"):
        assert out["scores"]["bleu"]["score"] == pytest.approx(100.0) and out["scores"]["ter"]["score"] == 0.0
    if hyp == "fr":
        assert out["scores"]["bleu"]["score"] < 1.0


OPTION_CASES = [
    ([], {}),
    (["--tokenize", "intl"], {"tokenize": "intl"}),
    (["--tokenize", "char"], {"tokenize": "char"}),
    (["--tokenize", "none"], {"tokenize": "none"}),
    (["--lowercase"], {"lowercase": True}),
    (["-lc", "--tokenize", "intl"], {"lowercase": True, "tokenize": "intl"}),
    (["--chrf-word-order", "2"], {"word_order": 2}),
]


@pytest.mark.parametrize("args, opts", OPTION_CASES)
def test_plain_lines_equal_sacrebleu_api(corpus, args, opts):
    keys = ("bleu", "chrf", "ter") if not args else ("bleu", "chrf")  # these options leave TER alone
    proc = mtcli_score(corpus["pert"], corpus["de"], *[a for key in keys for a in ("-M", key)], *args)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.decode().splitlines()
    want = []
    for key in keys:
        score, sig = expected(corpus["pert"], [corpus["de"]], key, opts)
        want.append(f"{score.format(2)}  {sig}")
    assert got == want


@pytest.mark.parametrize(
    "ours, theirs, width",
    [
        ([], [], 1),  # sacreBLEU's own default width
        (["-t", "intl", "-lc", "--chrf-word-order", "2"], ["-tok", "intl", "-lc", "--chrf-lowercase", "-cw", "2"], 4),
        (["--confidence", "--confidence-n", "200"], ["--confidence", "--confidence-n", "200"], 2),
        (["-t", "char"], ["-tok", "char"], 3),
    ],
)
def test_text_equals_sacrebleu_cli(corpus, ours, theirs, width):
    refs = [corpus["de"], corpus["en"]]
    proc = mtcli_score(corpus["pert"], *refs, "-M", "bleu", "-M", "chrf", "-M", "ter", "-w", width, *ours)
    assert proc.returncode == 0, proc.stderr
    cli = [sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(corpus["pert"])]
    cli += ["-m", "bleu", "chrf", "ter", "-w", str(width), "--no-color", "-f", "text", *theirs]
    ref = subprocess.run(cli, capture_output=True, text=True, check=True)
    # sacreBLEU prints metrics sorted by name and right-aligns them on the '='.
    want = sorted(line.strip() for line in ref.stdout.splitlines())
    assert sorted(as_sacrebleu_line(line) for line in proc.stdout.decode().splitlines()) == want


def test_json_confidence_matches_sacrebleu_cli_json(corpus):
    proc = mtcli_score(corpus["pert"], corpus["de.gz"], "--json", "--confidence", "-M", "bleu", "-M", "ter")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)["scores"]
    cli = [sys.executable, "-m", "sacrebleu", str(corpus["de.gz"]), "-i", str(corpus["pert"])]
    cli += ["-m", "bleu", "ter", "-f", "json", "-w", "2", "--confidence"]
    theirs = {d["name"]: d for d in json.loads(subprocess.run(cli, capture_output=True, check=True).stdout)}
    for key, name in (("bleu", "BLEU"), ("ter", "TER")):
        assert ours[key]["signature"] == theirs[name]["signature"]
        assert "bs:1000|seed:12345|" in ours[key]["signature"]
        assert float(f"{ours[key]['score']:.2f}") == theirs[name]["score"]
        assert float(f"{ours[key]['mean']:.2f}") == theirs[name]["confidence_mean"]
        assert float(f"{ours[key]['ci']:.2f}") == theirs[name]["confidence_var"]


def test_stdin_equals_file(corpus):
    from_file = mtcli_score(corpus["pert"], corpus["de"], "--json")
    piped = mtcli_score("-", corpus["de"], "--json", stdin=corpus["pert"].read_bytes())
    assert piped.returncode == 0, piped.stderr
    a, b = json.loads(from_file.stdout), json.loads(piped.stdout)
    assert b["hyp"] == "<stdin>" and a["scores"] == b["scores"]
    gz_ref_on_stdin = mtcli_score(corpus["pert"], "-", "--json", stdin=corpus["de.gz"].read_bytes())
    assert json.loads(gz_ref_on_stdin.stdout)["scores"] == a["scores"]


def test_reader_splits_like_sacrebleu(tmp_path):
    raw = "a b  \r\nc\u2028d\u00a0\n\n\ufeffe\x0bf\t\nlast".encode()
    path = tmp_path / "odd.txt"
    path.write_bytes(raw)
    assert split_lines(raw, "odd.txt") == lines(path)
    with pytest.raises(MtcliError, match=r"^x: line 3: invalid UTF-8$"):
        split_lines(b"ok\nok\n\xc3(\n", "x")


def test_table_shows_the_same_digits(corpus):
    from rich.console import Console

    score, sig = expected(corpus["pert"], [corpus["de"]], "bleu", {})
    console = Console(record=True, width=300)
    print_table([Result("bleu", score, sig)], 2, "pert vs de (1000 lines)", console=console)
    text = console.export_text()
    assert f"{score.score:.2f}" in text and sig in text and "pert vs de" in text


# ----------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    "hyp, gate, code, message",
    [
        ("de", ["--min-bleu", "99.5"], 0, None),
        ("fr", ["--min-bleu", "20"], 1, "score gate failed: BLEU 0.44 < 20.0"),
        ("fr", ["--min-chrf", "40"], 1, "score gate failed: chrF2 16.02 < 40.0"),
        ("pert", ["--max-ter", "10"], 1, "score gate failed: TER "),
        ("pert", ["--max-ter", "90", "--min-bleu", "5"], 0, None),
        ("fr", ["--min-bleu", "1", "--max-ter", "100"], 1, "BLEU 0.44 < 1.0; TER 114.85 > 100.0"),
    ],
)
def test_gates(corpus, hyp, gate, code, message):
    proc = mtcli_score(corpus[hyp], corpus["de"], *gate)
    assert proc.returncode == code, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith("BLEU = ")  # scores are printed whatever the gate says
    if "--max-ter" in gate:
        assert "\nTER = " in out  # a gate adds its metric
    if message:
        err = proc.stderr.decode().splitlines()
        assert len(err) == 1 and err[0].startswith("score gate failed: ") and message in err[0]


def test_gate_with_json_still_prints_json(corpus):
    proc = mtcli_score(corpus["fr"], corpus["de"], "--json", "--min-bleu", "20")
    assert proc.returncode == 1 and json.loads(proc.stdout)["scores"]["bleu"]["score"] < 20


# ----------------------------------------------------------------------------- bad input


def truncated(corpus, tmp_path) -> Path:
    path = tmp_path / "hyp.txt"
    path.write_text("\n".join(lines(corpus["de"])[:999]) + "\n", encoding="utf-8")
    return path


def bad_utf8(corpus, tmp_path) -> Path:
    data = corpus["de"].read_bytes().split(b"\n")
    data[4] += b" \xff\xfe"
    path = tmp_path / "bad.de"
    path.write_bytes(b"\n".join(data))
    return path


def empty(corpus, tmp_path) -> Path:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda c, t: [truncated(c, t), c["de"]], "line counts differ: {0} has 999 lines, {1} has 1000"),
        (lambda c, t: [c["de"], c["de"], truncated(c, t)], "line counts differ: {0} has 1000 lines, {2} has 999"),
        (lambda c, t: [t / "nope.txt", c["de"]], "{0}: No such file or directory"),
        (lambda c, t: [empty(c, t), c["de"]], "{0}: empty file"),
        (lambda c, t: [c["de"], bad_utf8(c, t)], "{1}: line 5: invalid UTF-8"),
        (lambda c, t: [c["de"], c["de"], "--tokenize", "moses"], "unknown --tokenize 'moses' (choose from none, zh, 13a"),
        (lambda c, t: [c["de"], c["de"], "-M", "bleu", "-M", "meteor"], "unknown metric 'meteor' (choose from bleu, chrf, ter)"),
        (lambda c, t: [c["de"]], "expected a hypothesis and at least one reference"),
        (lambda c, t: ["-", "-"], "'-' (standard input) can be given only once"),
        (lambda c, t: ["--src", c["en"], c["de"]], "--src needs --model"),
        (lambda c, t: ["--model", t, c["de"]], "--model needs --src"),
        (lambda c, t: ["--model", t, "--src", c["en"]], "expected at least one reference file"),
        (lambda c, t: ["--model", t, "--src", t / "src.en", c["de"]], "{3}: No such file or directory"),
        (lambda c, t: ["--model", t, "--src", truncated(c, t), c["de"]], "line counts differ: {3} has 999 lines, {4} has 1000"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(corpus, tmp_path, make_args, message):
    args = [str(a) for a in make_args(corpus, tmp_path)]
    proc = mtcli_score(*args, stdin=b"")
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b"" and len(err) == 1
    assert err[0].startswith("error: " + message.format(*args))


# ----------------------------------------------------------------------------- --model/--src


def run_model_mode(monkeypatch, corpus, translate) -> dict:
    """run_score with --model/--src, `mtcli.inference.translator` replaced by a stand-in (no model needed)."""
    import types

    from mtcli.score import run_score

    calls = []
    fake = types.ModuleType("mtcli.inference.translator")
    fake.translate_lines = lambda lines, model, beam=None: calls.append((lines, model)) or translate(lines)
    monkeypatch.setitem(sys.modules, "mtcli.inference.translator", fake)
    run_score(
        files=[str(corpus["de.gz"])], metrics=["bleu"], json_out=True, model=Path("m"), src=corpus["en"],
        tokenize=None, lowercase=False, chrf_word_order=0, confidence=False, confidence_n=1000, width=2,
        min_bleu=None, min_chrf=None, max_ter=None,
    )  # fmt: skip
    assert calls == [(lines(corpus["en"]), Path("m"))]
    return calls


def test_model_mode_scores_the_translation(monkeypatch, corpus, capsys):
    german = lines(corpus["de"])
    run_model_mode(monkeypatch, corpus, lambda src: [line + " " for line in german])
    out = json.loads(capsys.readouterr().out)
    assert out["hyp"] is None and out["src"] == str(corpus["en"]) and out["model"] == "m"
    assert out["n_lines"] == 1000 and out["scores"]["bleu"]["score"] == pytest.approx(100.0)


def test_model_mode_lost_lines_is_a_run_failure(monkeypatch, corpus):
    from mtcli.errors import RunFailure

    with pytest.raises(RunFailure, match="999 translations for the 1000 lines of "):
        run_model_mode(monkeypatch, corpus, lambda src: src[:-1])


def test_gate_message_never_rounds_away_the_failure(corpus):
    # BLEU of the perturbed copy is 49.98487...: at width 1 it prints 50.0, which is not < 50.
    proc = mtcli_score(corpus["pert"], corpus["de"], "-w", "1", "--min-bleu", "50")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "score gate failed: BLEU 49.98487095228327 < 50.0"
