"""`mtcli compare`: is system B really better than baseline A? sacreBLEU's paired significance tests.

Paired bootstrap resampling (Koehn 2004) or paired approximate randomization (Riezler and Maxwell
2005), run by sacreBLEU's own `significance.PairedTest` with its defaults (1,000 resamples, 10,000
trials) and its seed (`SACREBLEU_SEED`, default 12345), so every number equals
`sacrebleu REF -i BASELINE HYP... --paired-bs --format json`. With `--model` the systems are the
bundles' translations of `--src`, made first by the same code as `mtcli translate`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.score import (
    Text,
    build_metrics,
    check_counts,
    choose_metrics,
    read_text,
    translate_source,
)

DEFAULT_SAMPLES = {"bs": 1000, "ar": 10000}  # sacreBLEU's --paired-bs-n / --paired-ar-n


def systems_to_compare(hyps: list[str], models: list[Path], src: Path | None) -> list[Text]:
    """The baseline first, then the other systems: hypothesis files, or each model's translation of src."""
    if models and hyps:
        raise MtcliError("give hypothesis files or --model/--src, not both")
    if models:
        if src is None:
            raise MtcliError("--model needs --src, the source file each model translates")
        source = read_text(str(src))
        systems = [translate_source(source, model) for model in models]
    else:
        if src is not None:
            raise MtcliError("--src needs --model (two or more)")
        systems = [read_text(path) for path in hyps]
    if len(systems) < 2:
        raise MtcliError("compare needs a baseline and at least one other system (BASELINE HYP... or --model A --model B)")
    names = [s.name for s in systems]
    if len(set(names)) < len(names):
        raise MtcliError(f"a system is given twice: {', '.join(names)}")
    return systems


def paired_test(systems: list[Text], refs: list[Text], metrics: dict, test: str, n: int | None):
    """(signatures, scores) from sacreBLEU's PairedTest: scores[metric][i] is a significance Result."""
    from sacrebleu.significance import PairedTest

    named = [(s.name, s.lines) for s in systems]
    references = [r.lines for r in refs]
    ps = PairedTest(named, metrics, references=references, test_type=test, n_samples=n or DEFAULT_SAMPLES[test])
    signatures, scores = ps()
    return {k: v.format() for k, v in signatures.items()}, scores


def as_json(systems: list[Text], signatures: dict, scores: dict, test: str) -> dict:
    """The same numbers for scripts: per system and metric score, mean, ci, p_value, delta."""
    rows = []
    for i, system in enumerate(systems):
        row = {"system": system.name, "baseline": i == 0}
        for metric in signatures:
            r, base = scores[metric][i], scores[metric][0]
            row[metric] = {"score": _num(r.score), "mean": _num(r.mean), "ci": _num(r.ci), "p_value": _num(r.p_value),
                           "delta": None if i == 0 else round(float(r.score - base.score), 4)}  # fmt: skip
        rows.append(row)
    return {"test": "paired bootstrap resampling" if test == "bs" else "paired approximate randomization",
            "systems": rows, "signatures": signatures}  # fmt: skip


def _num(value) -> float | None:
    # sacreBLEU keeps numpy float32s here (its own --format json fails on them in 2.6.0).
    return None if value is None else float(value)


def print_table(report: dict, width: int) -> None:
    """One row per system: each metric's score, 95% interval (bootstrap only), delta and p-value."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=report["test"], title_justify="left")
    table.add_column("system")
    metrics = list(report["signatures"])
    for metric in metrics:
        table.add_column(metric, justify="right")
    for row in report["systems"]:
        cells = [("Baseline: " if row["baseline"] else "") + row["system"]]
        for metric in metrics:
            r = row[metric]
            text = f"{r['score']:.{width}f}"
            if r["ci"] is not None:  # bootstrap: mean and 95% half-width
                text += f" ({r['mean']:.{width}f} ± {r['ci']:.{width}f})"
            if not row["baseline"]:
                stars = " *" if r["p_value"] is not None and r["p_value"] < 0.05 else ""
                text += f"\nΔ {r['delta']:+.{width}f}  p = {r['p_value']:.4f}{stars}"
            cells.append(text)
        table.add_row(*cells)
    console = Console(width=max(100, 30 * (len(metrics) + 1)))
    console.print(table)
    if report["test"].endswith("randomization"):
        console.print("approximate randomization gives p-values only; use --paired-bs for 95% intervals")
    console.print("* p < 0.05: the difference to the baseline is unlikely to be chance")
    for metric, sig in report["signatures"].items():
        console.print(f"{metric}: {sig}", style="dim", highlight=False)


def run_compare(*, hyps: list[str], refs: list[str], models: list[Path], src: Path | None, test: str,
                n: int | None, metrics: list[str], tokenize: str | None, lowercase: bool,
                chrf_word_order: int, json_out: bool, width: int) -> dict:  # fmt: skip
    """The `mtcli compare` command; returns the report it printed."""
    if not refs:
        raise MtcliError("--ref REF is required (repeat it for several references)")
    scorers = build_metrics(choose_metrics(metrics, {}), tokenize, lowercase, chrf_word_order)
    references = [read_text(path) for path in refs]
    systems = systems_to_compare(hyps, models, src)
    for system in systems:
        check_counts(system, references)
    signatures, scores = paired_test(systems, references, scorers, test, n)
    report = as_json(systems, signatures, scores, test)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        print_table(report, width)
    return report
