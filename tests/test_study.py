"""`mtcli gradients` and `mtcli plot` on a slice of real data."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtcli.errors import MtcliError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mtcli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ}, timeout=300)


def test_gradients_table_json_and_plot(tmp_path):
    run = tmp_path / "run"
    out = cli("gradients", str(TINY), "--set", f"run_dir={run}", "--norm", "post,pre,deepnorm",
              "--layers", "2,3", "--batches", "2", "-o", str(tmp_path / "g.png"), "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "g.json").read_text())
    assert [(r["norm"], r["encoder_layers"]) for r in results] == [
        ("post", 2), ("pre", 2), ("deepnorm", 2), ("post", 3), ("pre", 3), ("deepnorm", 3)]
    for r in results:
        n = r["encoder_layers"]
        expected = {f"encoder.{i}.{s}" for i in range(n) for s in ("self_attn", "ff")}
        expected |= {f"decoder.{i}.{s}" for i in range(n) for s in ("self_attn", "cross_attn", "ff")}
        assert set(r["grad_norms"]) == expected
        assert all(v > 0 for v in r["grad_norms"].values())
    # Placements really differ: DeepNorm's beta-scaled init shrinks its gradients here.
    post, deep = results[0]["grad_norms"], results[2]["grad_norms"]
    assert deep["encoder.0.ff"] != pytest.approx(post["encoder.0.ff"], rel=0.05)
    assert "3+3 layers" in out.stdout and "deepnorm" in out.stdout
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG


def test_gradients_after_updates_and_bad_norm(tmp_path):
    run = tmp_path / "run"
    bad = cli("gradients", str(TINY), "--set", f"run_dir={run}", "--norm", "post,middle")
    assert bad.returncode == 2 and "middle" in bad.stderr
    ok = cli("gradients", str(TINY), "--set", f"run_dir={run}", "--norm", "pre", "--steps", "3", "--batches", "1",
             "--json", str(tmp_path / "g.json"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "g.json").read_text())[0]["steps"] == 3


def _metrics(run: Path, scale: float) -> Path:
    run.mkdir(parents=True)
    rows = [{"step": s, "time": s * 0.5, "loss": scale * 8 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e3}
            for s in range(1, 30)]
    rows += [{"step": 10, "time": 5.0, "valid_loss": 4.0, "valid_bleu": 3.0}, {"step": 20, "time": 10.0,
             "valid_loss": 3.0, "valid_bleu": 9.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_runs(tmp_path):
    a, b = _metrics(tmp_path / "a", 1.0), _metrics(tmp_path / "b", 2.0)
    out = cli("plot", str(a), str(b), "-o", str(tmp_path / "c.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    missing = cli("plot", str(tmp_path / "nope"), "-o", str(tmp_path / "d.png"))
    assert missing.returncode == 2 and "metrics.jsonl" in missing.stderr and not (tmp_path / "d.png").exists()


def test_plot_without_matplotlib_says_how(tmp_path, monkeypatch):
    from mtcli.analysis.plot import run_plot

    real_import = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(MtcliError, match=r"pip install 'mtcli\[plot\]'"):
        run_plot([_metrics(tmp_path / "a", 1.0)], tmp_path / "c.png")


def test_norm_study_keeps_finished_runs_resumes_a_stopped_one_and_caps_hours(tmp_path, monkeypatch):
    """bench/norm_study.py spread over several sittings: a run stopped by a signal stops the
    study; given again, the study keeps the finished runs, resumes the stopped one (its time
    added, its machines joined) and starts no run past --max-hours."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import norm_study

    monkeypatch.setattr(norm_study, "RESULTS", tmp_path)
    monkeypatch.setattr(norm_study, "translate_test", lambda result: result.update(hyps=f"h/{result['name']}"))
    monkeypatch.setattr(norm_study, "paired_test", lambda result, baseline, ref: None)
    calls, exits, host = [], {}, ["AMD EPYC, 2 cores"]

    def train(name, sets, args):
        calls.append(name)
        return {"name": name, "sets": sets, "exit": exits.get(name, 0), "wall_s": 1800.0, "cpu_s": 3600.0,
                "machine": host[0], "run_dir": f"runs/{name}"}  # fmt: skip

    monkeypatch.setattr(norm_study, "train", train)
    args = type("Args", (), {"seeds": [1, 2], "restart": False, "max_hours": 12.0, "steps": 10, "retrain_untested": None})()
    variants = [("pre", []), ("post", [])]
    exits["x-post-s1"] = 143  # SIGTERM: saved its checkpoint, to be resumed
    with pytest.raises(SystemExit, match="x-post-s1 stopped"):
        norm_study.run_experiment("x", variants, args)
    assert calls == ["x-pre-s1", "x-post-s1"]
    exits.clear()
    calls.clear()
    args.max_hours = 1.4  # 0.5 h finished; resuming the stopped run takes it to 1.5 h
    host[0] = "Intel Xeon, 2 cores"  # the next sitting has another machine
    norm_study.run_experiment("x", variants, args)
    assert calls == ["x-post-s1"]
    runs = json.loads((tmp_path / "x-seeds.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["x-pre-s1", "x-post-s1"]
    assert runs[1]["wall_s"] == 3600.0 and runs[1]["exit"] == 0
    assert runs[0]["machine"] == "AMD EPYC, 2 cores" and runs[1]["machine"] == "AMD EPYC, 2 cores + Intel Xeon, 2 cores"
    assert norm_study.hours_used() == 1.5


def test_norm_study_keeps_test_translations_and_retrains_a_lost_baseline(tmp_path, monkeypatch):
    """Run directories do not outlive a sitting, so each finished run's test translation is made
    at once and recorded; a run recorded before that, whose bundle is gone, is retrained only
    when it is its seed's baseline (every paired test of the seed needs it), or with
    --retrain-untested; the paired tests pair each run with its seed's baseline; the runs of
    seeds not asked for stay in the JSON."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import norm_study

    monkeypatch.setattr(norm_study, "RESULTS", tmp_path)
    monkeypatch.setattr(norm_study, "reference", lambda runs: tmp_path / "ref.txt")
    bundles, calls, pairs = set(), [], []

    def train(name, sets, args):
        calls.append(name)
        bundles.add(name)
        return {"name": name, "sets": sets, "exit": 0, "wall_s": 600.0, "cpu_s": 1200.0, "machine": "m",
                "run_dir": f"runs/{name}", "steps": 5, "best_valid_loss": 2.5, "best_valid_bleu": 30.0}  # fmt: skip

    def translate_test(result):
        if result["name"] in bundles:  # only a bundle of this sitting can translate
            result.update(hyps=f"h/{result['name']}", test_bleu=1.0)

    monkeypatch.setattr(norm_study, "train", train)
    monkeypatch.setattr(norm_study, "translate_test", translate_test)
    monkeypatch.setattr(norm_study, "paired_test", lambda r, pre, ref: pairs.append((pre["name"], r["name"])))
    recorded = [{"name": f"x-{v}-s{s}", "variant": v, "seed": s, "exit": 0, "wall_s": 900.0, "cpu_s": 1800.0,
                 "sets": [f"train.seed={s}"], "run_dir": f"runs/x-{v}-s{s}"} for s in (1, 2) for v in ("pre", "post")]  # fmt: skip
    (tmp_path / "x-seeds.json").write_text(json.dumps({"runs": recorded[:3]}))  # x-post-s2 not run yet
    args = type("Args", (), {"seeds": [2], "restart": False, "max_hours": 12.0, "steps": 10, "retrain_untested": None})()
    norm_study.run_experiment("x", [("pre", []), ("post", [])], args)
    assert calls == ["x-post-s2", "x-pre-s2"]  # the new run, then its lost baseline
    assert pairs == [("x-pre-s2", "x-post-s2")]
    runs = {r["name"]: r for r in json.loads((tmp_path / "x-seeds.json").read_text())["runs"]}
    assert list(runs) == ["x-pre-s1", "x-post-s1", "x-pre-s2", "x-post-s2"]
    assert "hyps" not in runs["x-pre-s1"] and "retrained" not in runs["x-pre-s1"]  # seed 1 not asked for
    assert runs["x-pre-s2"]["wall_s"] == 900.0 and runs["x-pre-s2"]["retrained"]["wall_s"] == 600.0
    assert runs["x-pre-s2"]["hyps"] == "h/x-pre-s2" and runs["x-post-s2"]["hyps"] == "h/x-post-s2"
    assert norm_study.hours_used() == pytest.approx((3 * 900 + 600 + 600) / 3600)  # the retraining counts
    calls.clear()
    args.seeds, args.retrain_untested = [1], ""  # bare --retrain-untested
    norm_study.run_experiment("x", [("pre", []), ("post", [])], args)
    assert calls == ["x-pre-s1", "x-post-s1"]


def test_norm_study_retrains_the_named_variants_first_within_the_budget(tmp_path, monkeypatch):
    """--retrain-untested deep,post retrains the seed's baseline, then deep, then post, and the
    hour cap stops it between runs: the comparisons named first get a short budget."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import norm_study

    monkeypatch.setattr(norm_study, "RESULTS", tmp_path)
    monkeypatch.setattr(norm_study, "reference", lambda runs: None)
    calls = []

    def train(name, sets, args):
        calls.append(name)
        return {"name": name, "sets": sets, "exit": 0, "wall_s": 600.0, "cpu_s": 1200.0, "machine": "m",
                "run_dir": f"runs/{name}", "steps": 5, "best_valid_loss": 2.5, "best_valid_bleu": 30.0}  # fmt: skip

    monkeypatch.setattr(norm_study, "train", train)
    monkeypatch.setattr(norm_study, "translate_test", lambda result: result.update(hyps=f"h/{result['name']}"))
    variants = ("pre", "post", "deep", "other")
    recorded = [{"name": f"x-{v}-s1", "variant": v, "seed": 1, "exit": 0, "wall_s": 900.0, "cpu_s": 1800.0,
                 "sets": ["train.seed=1"], "run_dir": f"runs/x-{v}-s1"} for v in variants]  # fmt: skip
    (tmp_path / "x-seeds.json").write_text(json.dumps({"runs": recorded}))
    # 4 x 900 s recorded = 1.0 h; each retraining adds 600 s, so a 1.2-hour cap allows two.
    args = type("Args", (), {"seeds": [1], "restart": False, "max_hours": 1.2, "steps": 10, "retrain_untested": "deep,post"})()
    norm_study.run_experiment("x", [(v, []) for v in variants], args)
    assert calls == ["x-pre-s1", "x-deep-s1"]
    calls.clear()
    args.max_hours = 12.0
    norm_study.run_experiment("x", [(v, []) for v in variants], args)
    assert calls == ["x-post-s1"]  # "other" was not named; the two retrained runs are not retrained again


def test_norm_study_summary_says_how_many_seeds_a_result_has(monkeypatch):
    """A result that only some seeds have (test BLEU of retrained runs) is marked with their
    count, and each p-value names its seed, so a table never passes one seed off as three."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import norm_study

    runs = [{"variant": "deep", "seed": s, "steps": 10, "best_valid_loss": 2.0 + s / 10, "best_valid_bleu": 30.0,
             "tokens_per_s": 100} for s in (1, 2, 3)]  # fmt: skip
    runs[1].update(test_bleu=37.0, p_vs_pre=0.2)
    runs[2].update(test_bleu=38.0, p_vs_pre=0.038)
    row = norm_study.summary(runs).splitlines()[2].split(" | ")
    assert row[4] == "2.200 ± 0.100"  # every seed: no count
    assert row[6] == "37.50 ± 0.71 (2 seeds)"
    assert row[7] == "s2 0.200, s3 0.038 |"
    del runs[1]["test_bleu"]
    assert norm_study.summary(runs).splitlines()[2].split(" | ")[6] == "38.00 (1 seed)"
