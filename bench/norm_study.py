"""The residual/normalization study of docs/NORMS.md, with seeds, reproducible one run at a time.

    python bench/norm_study.py gradients      # 1. per-layer gradient norms at init, 6+6 and 12+12, per seed
    python bench/norm_study.py warmup         # 2. post/pre/deepnorm with their usual warmup, and without, to convergence
    python bench/norm_study.py depth          # 3. a narrow 12+12 model; post vs pre vs deepnorm vs no residual
    python bench/norm_study.py rmsnorm        # 4. LayerNorm vs RMSNorm throughput and quality
    python bench/norm_study.py report         # tables (mean ± std, paired p-values) + figures from the JSON

Every experiment runs each variant with `--seeds` (default 1,2,3: model initialization and data
order, `train.seed`) on Multi30k en-de (configs/base.yaml, 2,048-token batches), one run at a
time with all cores, under a budget in updates (`--steps`), not minutes, so that results do not
depend on the machine's speed that day. Runs are resumable, so a study can be spread over days:
the command given again keeps the runs it recorded as finished, resumes a run stopped by Ctrl-C,
SIGTERM or a reboot from its last checkpoint (saved every 100 updates and on the signal), and
goes on with the rest (`--restart` starts over). Convergence (`warmup`): a run stops when its
validation loss has not improved by more than `--delta` (0.02 nats) over `--patience` (2)
evaluations of `--eval-every` (500) updates, that is over 1,000 updates, or at `--steps`. The BLEU claims get a paired test on
the same test sentences: each run's bundle translates the test split (beam search) and
`mtcli compare` (sacreBLEU's paired bootstrap) compares it with the pre-LN run of the same seed.
Raw results go to bench/results/norms/<experiment>-seeds.json, runs to runs/norms/<name>. The
time of every run is recorded (wall time, and CPU time as wall time x threads), and the study
starts no run once `--max-hours` (default 12) machine hours have been spent in total.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine

from mtcli.analysis.plot import read_metrics
from mtcli.files import write_text

RESULTS = REPO / "bench" / "results" / "norms"
HYPS = RESULTS / "hyps"  # each run's test translations, kept: run directories are not
FIGURES = REPO / "docs" / "figures"
BASE = REPO / "configs" / "base.yaml"
MTCLI = [sys.executable, "-m", "mtcli"]
THREADS, MAX_TOKENS = os.cpu_count() or 1, 2048
NARROW = ["model.d_model=128", "model.n_heads=4", "model.d_ff=512"]  # experiments 2 and 3


def run_dir(name: str) -> Path:
    return REPO / "runs" / "norms" / name


def hours_used(skip: Path | None = None) -> float:
    """Machine hours (wall time with every core) of every run recorded so far, but those in `skip`."""
    total = 0.0
    for path in RESULTS.glob("*-seeds.json"):
        if path != skip:
            total += sum(map(run_hours, json.loads(path.read_text()).get("runs", [])))
    return total


def finished(result: dict) -> bool:
    """Whether a recorded run has ended (its budget, an early stop, or divergence), rather than
    being stopped (a signal, a crash) and left to resume."""
    return result.get("exit") == 0 or bool(result.get("diverged"))


def train(name: str, sets: list[str], args) -> dict:
    """Train (or resume) one run to its budget; its results, with the time this call spent."""
    run = run_dir(name)
    cmd = MTCLI + ["train", str(args.config), "--set", f"run_dir={run}", "--set", f"train.max_steps={args.steps}",
                   "--set", f"train.eval_every={args.eval_every}", "--set", "train.save_every=100",
                   "--set", "train.log_every=25", "--set", "train.eval_max_sentences=500",
                   "--set", "train.average_last=1", "--set", "train.keep_last=2", "--set", "train.max_time=null",
                   "--set", f"train.threads={THREADS}", "--set", f"train.max_tokens={MAX_TOKENS}"]  # fmt: skip
    if args.restart:
        cmd.append("--restart")
    for s in sets:
        cmd += ["--set", s]
    began = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - began
    rows = read_metrics(run) if (run / "metrics.jsonl").exists() else []
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "valid_loss" in r]
    return {
        "name": name, "sets": sets, "exit": proc.returncode, "wall_s": round(wall, 1),
        "cpu_s": round(wall * THREADS, 1), "machine": f"{machine()['cpu']}, {THREADS} cores",
        "steps": max((r["step"] for r in rows), default=0),
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_valid_bleu": max((r.get("valid_bleu", 0) for r in evals), default=None),
        "best_valid_loss": min((r["valid_loss"] for r in evals), default=None),
        "tokens_per_s": _median([r["tokens_per_s"] for r in train_rows[1:]]),
        "diverged": proc.returncode != 0 and "not finite" in proc.stderr,
        "stderr_tail": proc.stderr[-400:], "run_dir": str(run.relative_to(REPO)),
        "curve": rows,  # every metrics.jsonl row: the figures are drawn from this JSON alone
    }  # fmt: skip


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def translate_test(result: dict) -> None:
    """Translate the test split with the run's bundle (beam search) as soon as the run has ended,
    keeping the hypotheses in the repository (`HYPS`), since run directories are not kept: the
    paired tests are made from these files, on any day, whatever is left under runs/."""
    run = REPO / result["run_dir"]
    bundle, data = run / "model", run / "data"
    if not (bundle / "model.safetensors").exists() or not (data / "test.src.txt").exists():
        return
    HYPS.mkdir(parents=True, exist_ok=True)
    hyps = HYPS / f"{result['name']}.txt"
    out = subprocess.run(MTCLI + ["translate", "-m", str(bundle), "-i", str(data / "test.src.txt"), "-o", str(hyps)],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        result["test_error"] = out.stderr[-300:]
        return
    score = subprocess.run(MTCLI + ["score", str(hyps), str(data / "test.tgt.txt"), "-M", "bleu", "--json"],
                           cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if score.returncode:
        result["test_error"] = score.stderr[-300:]
        return
    result["test_bleu"] = json.loads(score.stdout)["scores"]["bleu"]["score"]
    result["hyps"] = str(hyps.relative_to(REPO))


def reference(runs: list[dict]) -> Path | None:
    """The test references: any run's prepared copy (they are the same corpus and preparation)."""
    return next((p for r in runs if (p := REPO / r["run_dir"] / "data" / "test.tgt.txt").exists()), None)


def paired_test(result: dict, baseline: dict, ref: Path) -> None:
    """The paired bootstrap p-value (`mtcli compare`, sacreBLEU's) of a run against its baseline."""
    hyps = [str(REPO / baseline["hyps"]), str(REPO / result["hyps"])]
    out = subprocess.run(MTCLI + ["compare", *hyps, "--ref", str(ref), "-M", "bleu", "--json"],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        result["test_error"] = out.stderr[-300:]
        return
    result["p_vs_pre"] = json.loads(out.stdout)["systems"][1]["BLEU"]["p_value"]


def baseline_of(run: dict, runs: list[dict]) -> dict | None:
    """The pre-LN run of the same seed that `run` is compared with (None for that run itself)."""
    pre = next((b for b in runs if b["seed"] == run["seed"] and b["variant"].startswith("pre")), None)
    return None if pre is run else pre


def run_hours(run: dict) -> float:
    """Machine hours of a recorded run, with a retraining for its lost bundle (see `retrain`)."""
    return (run.get("wall_s", 0.0) + run.get("retrained", {}).get("wall_s", 0.0)) / 3600


def retrain(run: dict, args) -> None:
    """Train a finished run again, same settings and seed, for the bundle its test translation
    needs (runs recorded before hypotheses were kept lost theirs with the run directory). The
    recorded results stay; what the new run reached is kept beside them as `retrained`."""
    again, before = train(run["name"], run["sets"], args), run.get("retrained", {})
    run["retrained"] = {k: again[k] for k in ("exit", "wall_s", "cpu_s", "machine", "steps", "best_valid_loss", "best_valid_bleu")}
    for k in ("wall_s", "cpu_s"):  # a retraining stopped and resumed: both parts count
        run["retrained"][k] += before.get(k, 0.0)
    run["run_dir"] = again["run_dir"]
    if finished(again):
        translate_test(run)


def run_experiment(name: str, variants: list[tuple[str, list[str]]], args) -> None:
    """Every variant x seed, one at a time, saving the JSON after each run; each finished run's
    test translation right away, the paired tests at the end. Runs recorded as finished are kept
    as they are; a stopped one resumes, its time added; runs of seeds not asked for stay recorded."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-seeds.json"  # beside the single-seed results of the first study
    old = {} if args.restart or not path.exists() else {r["name"]: r for r in json.loads(path.read_text())["runs"]}
    runs = [r for r in old.values() if r["seed"] not in args.seeds]

    def over_budget() -> bool:
        if hours_used(skip=path) + sum(map(run_hours, runs)) > args.max_hours:
            print(f"stopping: {args.max_hours} machine hours used; rerun to continue", flush=True)
            return True
        return False

    for seed, (variant, sets) in ((seed, v) for seed in args.seeds for v in variants):
        run_name = f"{name}-{variant}-s{seed}"
        if run_name in old and finished(old[run_name]):
            runs.append(old[run_name])
            continue
        if over_budget():
            break
        result = train(run_name, [*sets, f"train.seed={seed}"], args)
        if run_name in old:  # resumed: its earlier time counts too
            result["wall_s"] += old[run_name]["wall_s"]
            result["cpu_s"] += old[run_name]["cpu_s"]
            was = old[run_name].get("machine")
            if was and was != result.get("machine"):  # resumed on another machine
                result["machine"] = f"{was} + {result.get('machine')}"
        result.update(variant=variant, seed=seed)
        runs.append(result)
        save(path, name, runs, args)
        if finished(result):
            translate_test(result)
            save(path, name, runs, args)
        print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "stderr_tail")}), flush=True)
        if not finished(result):
            raise SystemExit(f"{run_name} stopped (exit {result['exit']}); rerun to resume it")
    # Finished runs without hypotheses (their bundles lost): the baselines are retrained, since
    # every paired test of their seed needs them; the others only with --retrain-untested.
    # --retrain-untested VARIANTS takes only those, in that order, so a short budget goes first
    # to the comparisons that matter most.
    asked = [r for r in runs if r["seed"] in args.seeds]
    want = None if args.retrain_untested is None else [v for v in args.retrain_untested.split(",") if v]
    wanted = want is not None and not want  # bare --retrain-untested: every variant
    rank = {v: i for i, v in enumerate(want or [])}
    for r in sorted(asked, key=lambda r: (baseline_of(r, runs) is not None, rank.get(r["variant"], len(rank)))):
        if "hyps" not in r and finished(r) and not r.get("diverged"):
            if (baseline_of(r, runs) is None or wanted or r["variant"] in rank) and not over_budget():
                retrain(r, args)
                print(json.dumps({"retrained": r["name"], **r["retrained"], "test_bleu": r.get("test_bleu")}), flush=True)
                save(path, name, runs, args)
    ref = reference(runs)
    for r in asked:
        pre = baseline_of(r, runs)
        if ref and pre and "hyps" in r and "hyps" in pre:
            paired_test(r, pre, ref)
    save(path, name, runs, args)


def save(path: Path, name: str, runs: list[dict], args) -> None:
    doc = {"experiment": name, "steps": args.steps, "seeds": args.seeds, "runs": runs,
           "machine_hours": round(sum(map(run_hours, runs)), 2),
           "cpu_hours": round(sum(r["cpu_s"] + r.get("retrained", {}).get("cpu_s", 0.0) for r in runs) / 3600, 2)}  # fmt: skip
    write_text(path, json.dumps(doc, indent=2))


def exp_gradients(args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        out = RESULTS / f"gradients-s{seed}.json"
        cmd = MTCLI + ["gradients", str(args.config), "--norm", "post,pre,deepnorm", "--layers", "6,12", "--batches", "4",
                       "--json", str(out), "--set", "model.dropout=0.1", "--set", f"train.seed={seed}"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True)


def exp_warmup(args) -> None:
    # Each placement with the schedule it normally gets (inverse-sqrt decay after --warmup linear
    # warmup updates to --lr) and the same schedule without the ramp (the lr starts at the peak,
    # train.warmup_init_lr, and decays from the same update on), each trained until converged (see
    # --delta). The narrow width of experiment 3 at the base depth (3+3) and a peak lr of 2e-3
    # (Vaswani et al.'s d_model^-0.5 * warmup^-0.5 gives 2.8e-3 here), so that 18 runs to
    # convergence fit the 12-hour cap on two cores: at 1e-3, pre-LN's seed 1 took 7,000 updates
    # and 52 minutes (bench/results/norms/warmup-lr1e-3-seeds.json).
    converge = [f"train.patience={args.patience}", f"train.patience_delta={args.delta}", "train.best_metric=valid_loss",
                "train.schedule=inverse_sqrt", f"train.lr={args.lr}", f"train.warmup_steps={args.warmup}"]  # fmt: skip
    ramps = {f"w{args.warmup}": [], "w0": [f"train.warmup_init_lr={args.lr}"]}
    variants = [(f"{norm}-{w}", [*NARROW, f"model.norm={norm}", *converge, *ramp])
                for norm in ("pre", "post", "deepnorm") for w, ramp in ramps.items()]  # fmt: skip
    run_experiment("warmup", variants, args)


def exp_depth(args) -> None:
    narrow = [*NARROW, f"model.encoder_layers={args.layers}", f"model.decoder_layers={args.layers}",
              f"train.warmup_steps={args.warmup}", f"train.lr={args.lr}"]  # fmt: skip
    variants = [("pre", []), ("post", []), ("deepnorm", []), ("pre-noresidual", ["model.residual=false"])]
    run_experiment(f"depth{args.layers}", [(v, [*narrow, f"model.norm={v.split('-')[0]}", *extra]) for v, extra in variants], args)


def exp_rmsnorm(args) -> None:
    variants = [(f"pre-{t}", [f"model.norm_type={t}", f"train.warmup_steps={args.warmup}", f"train.lr={args.lr}"])
                for t in ("layernorm", "rmsnorm")]  # fmt: skip
    run_experiment("rmsnorm", variants, args)


def _spread(runs: list[dict], key: str, digits: int = 2) -> str:
    """'mean ± std' of a result over the seeds that have it."""
    xs = [r[key] for r in runs if r.get(key) is not None]
    if not xs:
        return "-"
    if len(xs) == 1:  # no spread to give: say how many seeds there were
        return f"{xs[0]:.{digits}f} (1 seed)"
    some = f" ({len(xs)} seeds)" if len(xs) < len(runs) else ""  # not every seed has it
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}{some}"


def best_step(run: dict) -> int | None:
    """The update of the run's best (lowest) validation loss: where it converged."""
    evals = [r for r in run.get("curve", []) if "valid_loss" in r]
    return min(evals, key=lambda r: r["valid_loss"])["step"] if evals else None


def summary(runs: list[dict], converged: bool = False) -> str:
    """A markdown table: each variant's mean ± std over seeds, and the paired p-values vs pre-LN;
    `converged` (runs stopped by patience) adds the update of the best validation loss."""
    for r in runs:
        r["best_step"] = best_step(r)
    best = " best at update |" if converged else ""
    lines = [f"| variant | seeds | updates |{best} train tokens/s | best valid loss | best valid BLEU | test BLEU | p vs pre-LN (per seed) |",
             "|---|---:|---:|" + ("---:|" if converged else "") + "---:|---:|---:|---:|---|"]  # fmt: skip
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        ps = ", ".join(f"s{r['seed']} {r['p_vs_pre']:.3f}" for r in rs if r.get("p_vs_pre") is not None) or "-"
        at = f" {_spread(rs, 'best_step', 0)} |" if converged else ""
        lines.append(f"| {variant} | {len(rs)} | {_spread(rs, 'steps', 0)} |{at} {_spread(rs, 'tokens_per_s', 0)} | "
                     f"{_spread(rs, 'best_valid_loss', 3)} | "
                     f"{_spread(rs, 'best_valid_bleu')} | {_spread(rs, 'test_bleu')} | {ps} |")  # fmt: skip
    return "\n".join(lines)


def curve_figure(name: str, runs: list[dict]) -> None:
    """Validation loss against updates, one line per run (a colour per variant, every seed drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtcli.analysis.figures import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {}
    for r in runs:
        evals = [e for e in r["curve"] if "valid_loss" in e]
        label = None if r["variant"] in colours else r["variant"]  # once per variant
        colour = colours.setdefault(r["variant"], f"C{len(colours)}")
        ax.plot([e["step"] for e in evals], [e["valid_loss"] for e in evals], color=colour, alpha=0.7,
                marker=".", label=label)  # fmt: skip
    ax.set(xlabel="update", ylabel="validation loss (label-smoothed)", title=f"{name}: every seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, FIGURES / f"norm-{name}-curves-seeds.png")


def figure(name: str, runs: list[dict]) -> None:
    """Best validation BLEU per variant: the mean over seeds with ± one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtcli.analysis.figures import save_figure

    variants = list(dict.fromkeys(r["variant"] for r in runs))
    values = [[r["best_valid_bleu"] or 0.0 for r in runs if r["variant"] == v] for v in variants]
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 2, 4))
    ax.bar(variants, [statistics.mean(v) for v in values],
           yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], capsize=4)  # fmt: skip
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", alpha=0.6)  # each seed
    ax.set(ylabel="best validation BLEU", title=f"{name}: mean ± std over seeds")
    fig.tight_layout()
    save_figure(fig, FIGURES / f"norm-{name}-seeds.png")


def _gradient_groups(by_seed: dict[int, list[dict]]):
    """(depth, placement, that model's result for every seed), in the order the runs were made."""
    first = next(iter(by_seed.values()))
    for depth, norm in dict.fromkeys((r["encoder_layers"], r["norm"]) for r in first):
        yield depth, norm, [r for runs in by_seed.values() for r in runs if (r["encoder_layers"], r["norm"]) == (depth, norm)]


def gradient_table(by_seed: dict[int, list[dict]]) -> str:
    """FFN weight-gradient norms of the first and top layers per placement and depth: mean ± std
    over seeds, and the decoder's top/first ratio computed per seed, then summarized."""
    lines = ["| placement | depth | seeds | decoder layer 1 | decoder top layer | top / first | encoder layer 1 | encoder top layer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for depth, norm, rs in _gradient_groups(by_seed):
        rows = [{"d1": r["grad_norms"]["decoder.0.ff"], "dn": r["grad_norms"][f"decoder.{r['decoder_layers'] - 1}.ff"],
                 "e1": r["grad_norms"]["encoder.0.ff"], "en": r["grad_norms"][f"encoder.{depth - 1}.ff"]}
                for r in rs]  # fmt: skip
        for row in rows:
            row["ratio"] = row["dn"] / row["d1"]
        cells = [_spread(rows, k, 3) for k in ("d1", "dn")] + [_spread(rows, "ratio", 1) + "×"]
        cells += [_spread(rows, k, 3) for k in ("e1", "en")]
        lines.append(f"| {norm} | {depth}+{depth} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradient_figure(by_seed: dict[int, list[dict]]) -> None:
    """Decoder and encoder FFN gradient norm by layer: the mean over seeds with ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtcli.analysis.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, stack in zip(axes, ("encoder", "decoder")):
        for depth, norm, rs in _gradient_groups(by_seed):
            per_layer = [[r["grad_norms"][f"{stack}.{i}.ff"] for r in rs] for i in range(depth)]
            means = [statistics.mean(v) for v in per_layer]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_layer]
            ax.errorbar(range(1, depth + 1), means, yerr=sds, marker="o", capsize=3, label=f"{norm} ({depth} layers)")
        ax.set(title=f"{stack} FFN", xlabel="layer", ylabel="gradient norm", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Per-layer gradient norms at initialization: mean ± std over seeds {sorted(by_seed)}")
    fig.tight_layout()
    save_figure(fig, FIGURES / "norm-gradients-seeds.png")


def report(args) -> None:
    """Tables and figures from the recorded JSON only."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    grads = {int(p.stem.split("-s")[-1]): json.loads(p.read_text()) for p in sorted(RESULTS.glob("gradients-s*.json"))}
    if grads:
        gradient_figure(grads)
        print(f"\ngradients at initialization, seeds {sorted(grads)}\n\n" + gradient_table(grads))
    for path in sorted(RESULTS.glob("*-seeds.json")):
        data = json.loads(path.read_text())
        if data.get("runs"):
            converged = data["experiment"].startswith("warmup")
            figure(data["experiment"], data["runs"])
            if converged:
                curve_figure(data["experiment"], data["runs"])
            hours = f"{data.get('machine_hours', '?')} machine hours, {data['cpu_hours']} CPU hours"
            print(f"\n{data['experiment']} ({hours})\n\n" + summary(data["runs"], converged))
            machines = {}
            for r in data["runs"]:
                machines.setdefault(r.get("machine", "not recorded"), []).append(r["name"])
            for m, names in machines.items():  # tokens/s depend on it; updates and losses do not
                print(f"- {m}: {', '.join(names)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["gradients", "warmup", "depth", "rmsnorm", "report"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=20000, help="update budget per run (warmup: the cap)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--patience", type=int, default=2, help="warmup: evaluations without a gain of --delta")
    parser.add_argument("--delta", type=float, default=0.02, help="warmup: validation-loss gain that counts")
    parser.add_argument("--layers", type=int, default=12, help="depth of the narrow model (depth experiment)")
    parser.add_argument("--warmup", type=int, default=1000, help="warmup updates of the runs that warm up")
    parser.add_argument("--lr", type=float, help="peak learning rate (warmup: 2e-3, else 1e-3)")
    parser.add_argument("--max-hours", type=float, default=12.0, help="machine hours for the whole study")
    parser.add_argument("--restart", action="store_true", help="start every run over")
    parser.add_argument("--retrain-untested", nargs="?", const="", metavar="VARIANTS",
                        help="retrain finished runs whose bundles were lost before their test translation "
                             "(optionally only these variants, in this order: e.g. deepnorm-w1000,post-w1000)")
    parser.add_argument("--config", type=Path, default=BASE, help="experiment config (configs/tiny.yaml: a smoke test)")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 2e-3 if args.experiment == "warmup" else 1e-3
    {"gradients": exp_gradients, "warmup": exp_warmup, "depth": exp_depth, "rmsnorm": exp_rmsnorm,
     "report": report}[args.experiment](args)  # fmt: skip


if __name__ == "__main__":
    main()
