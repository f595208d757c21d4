"""`mtcli compare`: paired significance equal to sacreBLEU's own command (issue 25)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import TINY, cli

LINES = 200


def sacrebleu_table(ref: Path, hyps: list[Path], *args: str, env: dict | None = None) -> list[list[float]]:
    """The numbers of each system row of `sacrebleu REF -i HYP... --paired-* -w 4` (its text table).

    sacreBLEU 2.6.0's `--format json` fails on paired tests (numpy float32 is not JSON
    serializable), so the table, printed with 4 decimals, is what is compared.
    """
    cmd = [sys.executable, "-m", "sacrebleu", str(ref), "-i", *map(str, hyps), "-w", "4", "--format", "text", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True).stdout
    rows: list[list[float]] = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) < 2 or not re.search(r"\d+\.\d+", "".join(cells[1:])):  # borders, header
            continue
        numbers = [float(x) for cell in cells[1:] for x in re.findall(r"\d+\.\d+", cell)]
        if cells[0]:  # a system row: score (mean ± ci) per metric
            rows.append(numbers)
        else:  # its p-values
            rows[-1] += numbers
    return rows


def ours(report: dict, metrics: list[str]) -> list[list[float]]:
    """mtcli compare --json in the order of sacreBLEU's table, rounded as it prints."""
    rows = []
    for system in report["systems"]:
        row = []
        for m in metrics:
            r = system[m]
            row += [round(r[k], 4) for k in ("score", "mean", "ci") if r[k] is not None]
        row += [round(system[m]["p_value"], 4) for m in metrics if system[m]["p_value"] is not None]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def systems(tmp_path_factory, prepared):
    """Two real systems: a tiny model after 30 and after 80 updates, translating test2016."""
    root = tmp_path_factory.mktemp("compare")
    run = root / "runs" / "tiny"
    shutil.copytree(prepared, run, symlinks=True)
    bundles = []
    for steps in (30, 80):
        out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", f"train.max_steps={steps}",
                  "--set", "train.eval_every=1000")  # fmt: skip
        assert out.returncode == 0, out.stderr
        bundles.append(root / f"model{steps}")
        shutil.copytree(run / "model", bundles[-1])
    src, ref = root / "src.en", root / "ref.de"
    src.write_text("".join((run / "data" / "test.src.txt").read_text().splitlines(True)[:LINES]))
    ref.write_text("".join((run / "data" / "test.tgt.txt").read_text().splitlines(True)[:LINES]))
    hyps = []
    for bundle in bundles:
        hyp = root / f"{bundle.name}.de"
        assert cli("translate", "-m", str(bundle), "-i", str(src), "-o", str(hyp)).returncode == 0
        hyps.append(hyp)
    assert hyps[0].read_text() != hyps[1].read_text()
    return {"bundles": bundles, "src": src, "ref": ref, "hyps": hyps}


def test_paired_bootstrap_equals_sacrebleu(systems):
    ref, hyps = systems["ref"], systems["hyps"]
    out = cli("compare", *map(str, hyps), "--ref", str(ref), "--paired-bs", "-M", "bleu", "-M", "chrf", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert ours(report, ["BLEU", "chrF2"]) == sacrebleu_table(ref, hyps, "--paired-bs", "-m", "bleu", "chrf")
    assert report["systems"][0]["baseline"] and report["systems"][1]["BLEU"]["p_value"] is not None
    assert "bs:1000" in report["signatures"]["BLEU"] and "seed:12345" in report["signatures"]["BLEU"]


def test_approximate_randomization_with_seed_and_trials_equals_sacrebleu(systems):
    ref, hyps = systems["ref"], systems["hyps"]
    env = {**os.environ, "SACREBLEU_SEED": "7"}
    cmd = [sys.executable, "-m", "mtcli", "compare", *map(str, hyps), "--ref", str(ref), "--paired-ar",
           "--paired-ar-n", "300", "-M", "bleu", "-M", "ter", "--json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["systems"][1]["BLEU"]["ci"] is None  # randomization gives no interval
    theirs = sacrebleu_table(ref, hyps, "--paired-ar", "--paired-ar-n", "300", "-m", "bleu", "ter",
                             env={"SACREBLEU_SEED": "7"})  # fmt: skip
    assert ours(report, ["BLEU", "TER"]) == theirs
    assert "ar:300" in report["signatures"]["BLEU"] and "seed:7" in report["signatures"]["BLEU"]


def test_models_are_translated_then_compared(systems):
    models = [a for b in systems["bundles"] for a in ("--model", str(b))]
    by_model = cli("compare", *models, "--src", str(systems["src"]), "--ref", str(systems["ref"]), "--json")
    by_file = cli("compare", *map(str, systems["hyps"]), "--ref", str(systems["ref"]), "--json")
    assert by_model.returncode == 0 and by_file.returncode == 0, by_model.stderr
    strip = lambda r: [{k: v for k, v in s.items() if k != "system"} for s in json.loads(r.stdout)["systems"]]  # noqa: E731
    assert strip(by_model) == strip(by_file)
    table = cli("compare", *map(str, systems["hyps"]), "--ref", str(systems["ref"]))
    assert "Baseline:" in table.stdout and "p =" in table.stdout


def test_bad_usage_is_one_line(systems, tmp_path):
    ref, hyps = str(systems["ref"]), [str(h) for h in systems["hyps"]]
    short = tmp_path / "short.de"
    short.write_text("one line\n")
    for args, expected in [((hyps[0], "--ref", ref), "at least one other system"),
                           ((*hyps, "--ref", ref, "--paired-bs", "--paired-ar"), "exclude each other"),
                           ((hyps[0], str(short), "--ref", ref), "line counts differ"),
                           ((*hyps,), "--ref REF is required"),
                           ((hyps[0], hyps[0], "--ref", ref), "given twice")]:  # fmt: skip
        out = cli("compare", *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert expected in out.stderr
