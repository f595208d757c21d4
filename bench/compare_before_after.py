"""Proof that a change of structure changed no behaviour: old and new code, one after the other.

Checks out BEFORE (a commit) in a temporary git worktree and runs, with the same Python, first the
old code and then this checkout's code on the same machine:

1. a short training run of configs/tiny.yaml (every update logged): the per-step losses, learning
   rates and gradient norms must be identical;
2. the translation of Multi30k test2016 (1,000 sentences) by the bundle that run exported, beam
   search with the bundle's own decode settings: byte-identical output, and each code also
   translates the other's bundle (old bundles load in new code and vice versa).

    python bench/compare_before_after.py --before 13a6f3c [--steps 300]

Exit 0 when everything is identical, 1 otherwise. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_SRC = "multi30k/test_2016_flickr.en.gz"


def run(cmd: list[str], code: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    """Run a command with `code` first on the import path (so `-m mtcli` is that tree's)."""
    env = {**env, "PYTHONPATH": str(code)}
    out = subprocess.run(cmd, env=env, capture_output=True, cwd=code, **kw)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {code}:\n{out.stderr.decode()[-3000:]}")
    return out


def check_import(code: Path, env: dict) -> None:
    """Make sure `import mtcli` resolves to the tree under test, not the installed one."""
    out = run([sys.executable, "-c", "import mtcli; print(mtcli.__file__)"], code, env)
    where = Path(out.stdout.decode().strip()).resolve()
    if code.resolve() not in where.parents:
        sys.exit(f"import mtcli found {where}, not the code in {code}")


def train(code: Path, run_dir: Path, steps: int, env: dict) -> list[dict]:
    """Train the tiny config for `steps` updates; the training rows of its metrics.jsonl."""
    run([sys.executable, "-m", "mtcli", "train", str(code / "configs" / "tiny.yaml"),
         "--set", f"run_dir={run_dir}", "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
         "--set", "train.threads=1", "--set", "train.device=cpu", "--set", "train.eval_every=100"],
        code, env)  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "loss", "step_loss", "nll", "lr", "grad_norm", "ntokens", "valid_loss", "valid_bleu")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def translate(code: Path, bundle: Path, src: Path, env: dict) -> bytes:
    """The bundle's translation of the test set (its own decode settings)."""
    return run([sys.executable, "-m", "mtcli", "translate", "--model", str(bundle), "-i", str(src)],
               code, env).stdout  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the commit before the change")
    ap.add_argument("--steps", type=int, default=300, help="updates of the tiny training run")
    args = ap.parse_args()
    data = Path(os.environ.get("MTCLI_DATA", REPO.parent / "shared" / "data")).resolve()
    env = {**os.environ, "MTCLI_DATA": str(data), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="mtcli-compare-") as tmp:
        tmp = Path(tmp)
        old_code = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_code), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            return compare(old_code, REPO, tmp, data, args.steps, env)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_code)], check=False)


def compare(old_code: Path, new_code: Path, tmp: Path, data: Path, steps: int, env: dict) -> int:
    """Train and translate with each tree; print what matched; 0 when everything did."""
    import gzip

    src = tmp / "test2016.en"
    src.write_bytes(gzip.decompress((data / TEST_SRC).read_bytes()))
    results, ok = {}, True
    for name, code in (("before", old_code), ("after", new_code)):
        check_import(code, env)
        rows = train(code, tmp / name / "runs" / "tiny", steps, env)
        results[name] = {"rows": rows, "bundle": tmp / name / "runs" / "tiny" / "model"}
        print(f"{name}: {sum('loss' in r for r in rows)} training rows, last loss "
              f"{[r['loss'] for r in rows if 'loss' in r][-1]}", flush=True)  # fmt: skip
    same_rows = results["before"]["rows"] == results["after"]["rows"]
    print(f"per-step training rows identical: {same_rows}")
    ok &= same_rows
    outputs = {}
    for code_name, code in (("before", old_code), ("after", new_code)):
        for bundle_name in ("before", "after"):
            out = translate(code, results[bundle_name]["bundle"], src, env)
            outputs[(code_name, bundle_name)] = out
            print(f"{code_name} code, {bundle_name} bundle: {len(out.splitlines())} lines, "
                  f"sha256 {hashlib.sha256(out).hexdigest()[:16]}", flush=True)  # fmt: skip
    same_text = len(set(outputs.values())) == 1
    print(f"test2016 translations byte-identical across code and bundles: {same_text}")
    ok &= same_text
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
