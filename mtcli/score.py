"""`mtcli score`: sacreBLEU's BLEU, chrF and TER of a hypothesis against one or more references.

Every number, metric name and signature comes from the sacrebleu package itself, so the results
equal `sacrebleu REF... -i HYP` to the last printed digit. Files are read the way sacreBLEU's
command line reads them: strict UTF-8 (gzip allowed), one segment per "\\n", trailing whitespace
stripped (`line.rstrip()`).
"""

from __future__ import annotations

import gzip
import json
import operator
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtcli.errors import MtcliError, RunFailure

if TYPE_CHECKING:
    from rich.console import Console
    from sacrebleu.metrics.base import Metric, Score

METRICS = ("bleu", "chrf", "ter")
DEFAULT_METRICS = ("bleu", "chrf")
STDIN = "-"
STDIN_NAME = "<stdin>"
GZIP_MAGIC = b"\x1f\x8b"

# The fields of sacrebleu's Score objects that --json reports besides name, score and signature.
DETAILS = {
    "bleu": ("counts", "totals", "precisions", "bp", "sys_len", "ref_len", "ratio"),
    "chrf": ("char_order", "word_order", "beta"),
    "ter": ("num_edits", "ref_length"),
}


@dataclass
class Text:
    """One side of the evaluation: a display name and its segments."""

    name: str
    lines: list[str]


@dataclass
class Result:
    """One metric's sacrebleu score with its signature string."""

    key: str  # bleu | chrf | ter
    score: Score
    signature: str


# ----------------------------------------------------------------------------- reading


def _read_bytes(path: str) -> bytes:
    if path == STDIN:
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise MtcliError(f"{path}: {exc.strerror or exc}") from None


def split_lines(data: bytes, name: str) -> list[str]:
    """Decode strict UTF-8 and split into segments exactly as sacreBLEU's reader does."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MtcliError(f"{name}: line {line}: invalid UTF-8") from None
    # sacreBLEU opens files with newline="\n" (so "\r", "\u2028"... are not line breaks) and
    # rstrip()s every line, which also removes the "\r" of "\r\n".
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip() for line in lines]


def read_text(path: str) -> Text:
    """Read a plain or gzip-compressed text file (`-` = standard input) into its segments."""
    name = STDIN_NAME if path == STDIN else path
    data = _read_bytes(path)
    if data[:2] == GZIP_MAGIC:  # by content, so `-` and misnamed files work too
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise MtcliError(f"{name}: corrupt gzip data ({exc})") from None
    if not data:
        raise MtcliError(f"{name}: empty file")
    return Text(name, split_lines(data, name))


def check_counts(first: Text, refs: list[Text]) -> None:
    for ref in refs:
        if len(ref.lines) != len(first.lines):
            raise MtcliError(
                f"line counts differ: {first.name} has {len(first.lines)} lines, "
                f"{ref.name} has {len(ref.lines)}"
            )


def _check_usage(files: list[str], model: Path | None, src: Path | None) -> None:
    if files.count(STDIN) + (str(src) == STDIN) > 1:
        raise MtcliError("'-' (standard input) can be given only once")
    if model is not None and src is None:
        raise MtcliError("--model needs --src, the source file to translate")
    if src is not None and model is None:
        raise MtcliError("--src needs --model, the model that translates it")
    if src is not None and not files:
        raise MtcliError("expected at least one reference file: --model PATH --src SRC REF [REF ...]")
    if src is None and len(files) < 2:
        raise MtcliError("expected a hypothesis and at least one reference: HYP REF [REF ...]")


def translate_source(source: Text, model: Path) -> Text:
    """`model`'s translation of `source`, as `mtcli translate -i SRC` would write it."""
    from mtcli.inference.translator import translate_lines

    out = translate_lines(source.lines, model)
    if len(out) != len(source.lines):
        raise RunFailure(f"{model}: {len(out)} translations for the {len(source.lines)} lines of {source.name}")
    # Same segments as `mtcli translate -i SRC | mtcli score - REF` would read.
    return Text(f"{model}({source.name})", [line.rstrip() for line in out])


def load_inputs(files: list[str], model: Path | None, src: Path | None) -> tuple[Text, list[Text]]:
    """Read the hypothesis and references; with --model/--src the hypothesis is SRC translated."""
    _check_usage(files, model, src)
    if src is None:
        hyp, *refs = [read_text(path) for path in files]
        check_counts(hyp, refs)
        return hyp, refs
    source = read_text(str(src))
    refs = [read_text(path) for path in files]
    check_counts(source, refs)
    return translate_source(source, model), refs


# ----------------------------------------------------------------------------- scoring


def choose_metrics(requested: list[str], gates: dict[str, float | None]) -> list[str]:
    """The metrics to compute: those requested (default BLEU and chrF) plus any a gate needs."""
    names = [name.lower() for name in requested] or list(DEFAULT_METRICS)
    for name in names:
        if name not in METRICS:
            raise MtcliError(f"unknown metric {name!r} (choose from {', '.join(METRICS)})")
    names += [key for key, limit in gates.items() if limit is not None]
    return list(dict.fromkeys(names))


def _bleu(tokenize: str | None, lowercase: bool) -> Metric:
    from sacrebleu.metrics import BLEU

    if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
        allowed = ", ".join(BLEU.TOKENIZERS)
        raise MtcliError(f"unknown --tokenize {tokenize!r} (choose from {allowed})")
    try:
        return BLEU(tokenize=tokenize, lowercase=lowercase)
    except Exception as exc:  # e.g. ja-mecab without its package, spm without network
        raise MtcliError(f"--tokenize {tokenize}: {exc}") from exc


def build_metrics(
    names: list[str], tokenize: str | None, lowercase: bool, chrf_word_order: int
) -> dict[str, Metric]:
    """sacrebleu metric objects keyed by name, configured like sacreBLEU's own options."""
    from sacrebleu.metrics import CHRF, TER

    bleu = _bleu(tokenize, lowercase)  # validates --tokenize even when BLEU is not asked for
    metrics: dict[str, Metric] = {}
    for name in names:
        if name == "bleu":
            metrics[name] = bleu
        elif name == "chrf":
            metrics[name] = CHRF(word_order=chrf_word_order, lowercase=lowercase)
        else:
            metrics[name] = TER()  # case-insensitive by default, as in sacreBLEU (case:lc)
    return metrics


def compute_scores(
    metrics: dict[str, Metric], hyps: list[str], refs: list[list[str]], n_bootstrap: int = 1
) -> list[Result]:
    """Corpus scores and signatures; n_bootstrap > 1 adds sacreBLEU's bootstrap 95% CI."""
    results = []
    for key, metric in metrics.items():
        score = metric.corpus_score(hyps, refs, n_bootstrap=n_bootstrap)
        # The signature is complete only after scoring (nrefs, bs, seed).
        results.append(Result(key, score, metric.get_signature().format()))
    return results


# ----------------------------------------------------------------------------- reporting


def score_dict(result: Result, confidence: bool) -> dict[str, Any]:
    """One metric's JSON object: name, full-precision score, signature and sacrebleu's details."""
    score = result.score
    out: dict[str, Any] = {"name": score.name, "score": score.score, "signature": result.signature}
    out.update({field: getattr(score, field) for field in DETAILS[result.key]})
    if confidence:  # sacrebleu keeps the bootstrap mean and 95% CI half-width privately (numpy)
        out.update(mean=float(score._mean), ci=float(score._ci))
    return out


def plain_lines(results: list[Result], width: int) -> list[str]:
    """One line per metric: sacrebleu's `score.format(width)`, two spaces, the signature."""
    return [f"{r.score.format(width)}  {r.signature}" for r in results]


def print_table(results: list[Result], width: int, title: str, console: Console | None = None) -> None:
    """A rich table of the scores, for a terminal (default: a Console on stdout)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text as RichText

    table = Table(title=RichText(title))
    for column, justify in (("metric", "left"), ("score", "right"), ("details", "left")):
        table.add_column(column, justify=justify)
    table.add_column("signature", style="dim", overflow="fold")
    for r in results:
        number, _, details = r.score.format(width).split(" = ", 1)[1].partition(" ")
        table.add_row(r.score.name, RichText(number, style="bold"), RichText(details), RichText(r.signature))
    (console or Console()).print(table)


def report(results: list[Result], meta: dict[str, Any], json_out: bool, confidence: bool, width: int) -> None:
    """Print the results on stdout: JSON, a table on a terminal, else plain lines."""
    if json_out:
        scores = {r.key: score_dict(r, confidence) for r in results}
        sys.stdout.write(json.dumps({**meta, "scores": scores}, indent=2, ensure_ascii=False) + "\n")
    elif sys.stdout.isatty():
        refs = ", ".join(meta["refs"])
        print_table(results, width, f"{meta['hyp'] or meta['src']} vs {refs} ({meta['n_lines']} lines)")
    else:
        sys.stdout.write("".join(line + "\n" for line in plain_lines(results, width)))


def _shown(value: float, width: int, op: Any, limit: float) -> str:
    text = f"{value:.{width}f}"
    return text if op(float(text), limit) else repr(value)  # rounding must not hide the failure


def gate_failures(results: list[Result], gates: dict[str, float | None], width: int) -> list[str]:
    """Messages such as `BLEU 12.34 < 20.0` for each --min-bleu/--min-chrf/--max-ter not met."""
    failures = []
    for r in results:
        limit = gates.get(r.key)
        if limit is None:
            continue
        op, sign = (operator.gt, ">") if r.key == "ter" else (operator.lt, "<")
        if op(r.score.score, limit):
            failures.append(f"{r.score.name} {_shown(r.score.score, width, op, limit)} {sign} {limit}")
    return failures


def run_score(
    *,
    files: list[str],
    metrics: list[str],
    json_out: bool,
    model: Path | None,
    src: Path | None,
    tokenize: str | None,
    lowercase: bool,
    chrf_word_order: int,
    confidence: bool,
    min_bleu: float | None,
    min_chrf: float | None,
    max_ter: float | None,
    confidence_n: int,
    width: int,
) -> list[str]:
    """Score a hypothesis file (or --model's translation of --src) against references; returns
    the failed `--min-*`/`--max-ter` gates (empty when all pass)."""
    gates = {"bleu": min_bleu, "chrf": min_chrf, "ter": max_ter}
    scorers = build_metrics(choose_metrics(metrics, gates), tokenize, lowercase, chrf_word_order)
    hyp, refs = load_inputs(files, model, src)
    n_bootstrap = confidence_n if confidence else 1
    results = compute_scores(scorers, hyp.lines, [ref.lines for ref in refs], n_bootstrap)
    meta: dict[str, Any] = {"n_lines": len(hyp.lines), "hyp": None if src else hyp.name}
    if src is not None:  # the hypothesis is the model's translation of src
        meta.update(src=STDIN_NAME if str(src) == STDIN else str(src), model=str(model))
    meta["refs"] = [ref.name for ref in refs]
    report(results, meta, json_out, confidence, width)
    return gate_failures(results, gates, width)
