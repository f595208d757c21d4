"""Training: end to end on a slice of Multi30k, exact resume, signals, faults, schedules, batching."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from run_helpers import REPO, TINY, cli, rows

from mtcli.config import load_config
from mtcli.data.batching import token_batches
from mtcli.errors import MtcliError, RunFailure
from mtcli.training.optim import lr_factor
from mtcli.training.run import run_train


def test_train_end_to_end(run, tmp_path):
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.log_every=5")
    assert out.returncode == 0, out.stderr
    losses = [v for _, v in rows(run, "loss")]
    assert len(losses) == 8 and np.mean(losses[-2:]) < losses[0] - 0.5
    evals = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if "valid_loss" in r]
    assert [e["step"] for e in evals] == [20, 40]
    assert "valid_bleu" in evals[-1] and "tok:13a" in evals[-1]["bleu_signature"]
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]
    grads = [json.loads(r)["layer_grad_norms"] for r in (run / "metrics.jsonl").read_text().splitlines()
             if "layer_grad_norms" in r]
    # tiny.yaml: grad_norm_every defaults to 100 > max_steps, so none yet
    assert grads == []
    bundle = run / "model"
    assert {"model.safetensors", "config.yaml", "metadata.json", "spm.model"} <= {p.name for p in bundle.iterdir()}
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == bundle.resolve()
    # translate finds runs/latest from the working directory
    tr = cli("translate", "A man is walking.", "", "Two dogs.", cwd=tmp_path)
    assert tr.returncode == 0, tr.stderr
    lines = tr.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]


def test_layer_grad_norms_logged(run):
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=6",
              "--set", "train.grad_norm_every=3", "--set", "train.log_every=3", "--set", "model.norm=post")
    assert out.returncode == 0, out.stderr
    logged = [json.loads(r)["layer_grad_norms"] for r in (run / "metrics.jsonl").read_text().splitlines()
              if "layer_grad_norms" in r]
    assert len(logged) == 2
    keys = set(logged[0])
    assert {"encoder.0.self_attn", "encoder.1.ff", "decoder.0.cross_attn", "decoder.1.ff"} <= keys
    assert all(v > 0 and np.isfinite(v) for v in logged[0].values())


def test_resume_is_exact(run, tmp_path):
    other = tmp_path / "runs" / "split"
    shutil.copytree(run, other, symlinks=True)
    common = ["--set", "train.log_every=1", "--set", "train.max_steps=30", "--set", "train.save_every=7"]
    full = cli("train", str(TINY), "--set", f"run_dir={run}", *common)
    assert full.returncode == 0, full.stderr
    first = cli("train", str(TINY), "--set", f"run_dir={other}", *common[:-2], "--set", "train.max_steps=13",
                "--set", "train.save_every=7")
    assert first.returncode == 0, first.stderr
    second = cli("train", str(TINY), "--set", f"run_dir={other}", *common)
    assert second.returncode == 0, second.stderr
    assert "resuming from step 13" in second.stderr
    assert rows(other, "loss") == rows(run, "loss")
    assert len(rows(run, "loss")) == 30


def test_subword_sampling_resamples_each_epoch_and_resumes_exactly(run, tmp_path):
    # 16k-token batches: a few batches per epoch, so 16 updates cross several epoch boundaries
    common = ["--set", "train.log_every=1", "--set", "train.max_tokens=16384", "--set", "train.eval_every=1000",
              "--set", "train.subword_alpha=0.2", "--set", "train.save_every=5"]
    plain = tmp_path / "runs" / "plain"
    other = tmp_path / "runs" / "split"
    shutil.copytree(run, plain, symlinks=True)
    shutil.copytree(run, other, symlinks=True)
    full = cli("train", str(TINY), "--set", f"run_dir={run}", *common, "--set", "train.max_steps=16")
    assert full.returncode == 0, full.stderr
    assert "subword sampling each epoch: alpha 0.2" in full.stderr
    epochs = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]
    assert max(epochs) >= 3
    first = cli("train", str(TINY), "--set", f"run_dir={other}", *common, "--set", "train.max_steps=7")
    assert first.returncode == 0, first.stderr
    second = cli("train", str(TINY), "--set", f"run_dir={other}", *common, "--set", "train.max_steps=16")
    assert second.returncode == 0 and "resuming from step 7" in second.stderr, second.stderr
    assert rows(other, "loss") == rows(run, "loss")
    # the same run without sampling sees other token counts (sampled segmentations are longer)
    unsampled = cli("train", str(TINY), "--set", f"run_dir={plain}", *common[:-4], "--set", "train.max_steps=16")
    assert unsampled.returncode == 0, unsampled.stderr
    assert sum(v for _, v in rows(run, "ntokens")) > sum(v for _, v in rows(plain, "ntokens"))


def test_subword_sampler_keeps_text_and_is_seeded(prepared):
    import sentencepiece as spm

    from mtcli.data.manifest import SPECIAL
    from mtcli.data.splits import load_pair
    from mtcli.data.spm import Tokenizer
    from mtcli.data.subword import SubwordSampler, epoch_seed

    manifest = json.loads((prepared / "data" / "manifest.json").read_text())
    src, _ = load_pair(prepared / "data", "train", manifest["dtype"])
    model = prepared / "data" / "spm.model"
    n = 300
    head = [src[i] for i in range(n)]  # a sampler reads any sequence of id arrays
    sampler = SubwordSampler(head, model, alpha=0.1, nbest=8)
    a, b, c = (sampler.sample(epoch_seed(1, e, 0)) for e in (1, 1, 2))
    assert len(a) == n and np.array_equal(a.lengths, b.lengths) and np.array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    tok = Tokenizer(prepared / "data")
    stored = tok.decode_tgt([src[i].tolist() for i in range(n)])
    assert tok.decode_tgt([a[i].tolist() for i in range(n)]) == stored
    assert sum(not np.array_equal(a[i], src[i]) for i in range(n)) > n // 2
    # a very peaked distribution gives back the best (stored) segmentation
    peaked = SubwordSampler(head, model, alpha=1000.0, nbest=8).sample(epoch_seed(1, 1, 0))
    assert all(np.array_equal(peaked[i], src[i]) for i in range(n))
    # draws follow P(segmentation)^alpha over the n-best, P from the piece log-probabilities
    sp = spm.SentencePieceProcessor(model_file=str(model))
    one = [src[3]]
    nbest = sp.nbest_encode(stored[3], nbest_size=4)
    logp = np.array([sum(sp.get_score(t) for t in cand) for cand in nbest])
    expected = np.exp(0.5 * logp) / np.exp(0.5 * logp).sum()
    one_sampler = SubwordSampler(one, model, alpha=0.5, nbest=4)
    draws = [tuple(one_sampler.sample(epoch_seed(1, e, 0))[0]) for e in range(4000)]
    seen = np.array([draws.count(tuple(cand)) / len(draws) for cand in nbest])
    assert np.abs(seen - expected).max() < 0.03
    # a sentence holding an unknown piece cannot round-trip through text: it keeps its stored ids
    with_unk = [np.array([SPECIAL["unk_id"], *src[0]]), src[1]]
    kept = SubwordSampler(with_unk, model, alpha=0.1, nbest=8).sample(epoch_seed(1, 1, 0))
    assert np.array_equal(kept[0], with_unk[0])


def test_sigint_saves_and_resumes(run):
    cmd = [sys.executable, "-m", "mtcli", "train", str(TINY), "--set", f"run_dir={run}",
           "--set", "train.max_steps=100000", "--set", "train.log_every=1", "--set", "train.save_every=100000",
           "--set", "train.eval_every=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)  # until 5 updates are logged (training would go on for 100,000)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    saved = sorted((run / "checkpoints").glob("step_*.pt"))
    assert saved
    step = torch.load(saved[-1], weights_only=True)["state"]["step"]
    assert step >= 5
    again = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", f"train.max_steps={step + 2}")
    assert again.returncode == 0 and f"resuming from step {step}" in again.stderr


def test_shape_change_and_corrupt_checkpoint(run):
    base = ["train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=3", "--set", "train.eval_every=1000"]
    assert cli(*base).returncode == 0
    changed = cli(*base, "--set", "model.d_model=64", "--set", "train.max_steps=4")
    assert changed.returncode == 2
    assert "model.d_model" in changed.stderr and "--restart" in changed.stderr
    assert [ln for ln in changed.stderr.splitlines() if ln.startswith("error:")] and "Traceback" not in changed.stderr
    restarted = cli(*base, "--set", "model.d_model=64", "--set", "train.max_steps=4", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    ckpt = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    corrupt = cli(*base, "--set", "model.d_model=64", "--set", "train.max_steps=5")
    assert corrupt.returncode == 2
    assert "corrupt" in corrupt.stderr and str(ckpt.name) in corrupt.stderr and "Traceback" not in corrupt.stderr


def test_nan_loss_skips_then_stops(run, monkeypatch):
    import mtcli.training.trainer as train_mod

    real = train_mod.label_smoothed_nll

    def poisoned(logits, *a, **kw):
        loss, nll = real(logits, *a, **kw)
        return loss * float("nan"), nll

    monkeypatch.setattr(train_mod, "label_smoothed_nll", poisoned)
    cfg = load_config(TINY, [f"run_dir={run}", "train.max_bad_steps=3"])
    with pytest.raises(RunFailure, match="not finite"):
        run_train(cfg)


def test_disk_full_keeps_previous_checkpoint(run, monkeypatch):
    import mtcli.training.checkpoints as ckpt_mod

    cfg = load_config(TINY, [f"run_dir={run}", "train.max_steps=4", "train.save_every=2", "train.eval_every=1000"])
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(RunFailure, match="No space left"):
        run_train(cfg)
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["step_00000002.pt"]
    assert torch.load(run / "checkpoints" / files[0], weights_only=True)["state"]["step"] == 2


def test_average_command(run):
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=6", "--set",
              "train.save_every=2", "--set", "train.eval_every=1000")
    assert out.returncode == 0, out.stderr
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))[-2:]
    avg = cli("average", str(run), "--last", "2", "-o", str(run / "avg"))
    assert avg.returncode == 0, avg.stderr
    from safetensors.torch import load_file

    got = load_file(str(run / "avg" / "model.safetensors"))
    states = [torch.load(p, weights_only=True, map_location="cpu")["model"] for p in ckpts]
    key = "encoder.0.ff.linear1.weight"
    torch.testing.assert_close(got[key], (states[0][key] + states[1][key]) / 2)
    assert cli("translate", "-m", str(run / "avg"), "A dog.").returncode == 0


def test_ddp_two_processes_stay_in_sync(run, tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(f"""
import json, os, sys, torch
sys.path.insert(0, {str(REPO)!r})
from mtcli.config import load_config
from mtcli.training.run import run_train
cfg = load_config({str(TINY)!r}, ["run_dir={run}", "train.max_steps=12", "train.log_every=1",
                   "train.eval_every=1000", "train.save_every=6", "train.threads=1",
                   "train.device=cpu"])
import mtcli.training.trainer as t
orig = t.Trainer.fit
def fit(self, *a, **kw):
    orig(self, *a, **kw)
    flat = torch.cat([p.detach().flatten() for p in self.model.parameters()])
    with open(os.path.join({str(tmp_path)!r}, f"rank{{self.dist.rank}}.json"), "w") as f:
        json.dump({{"sum": float(flat.double().sum()), "norm": float(flat.double().norm()), "world": self.dist.world}}, f)
t.Trainer.fit = fit
run_train(cfg)
""")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          str(script)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == 2 and r0 == r1
    losses = [v for _, v in rows(run, "loss")]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0]
    # The checkpoint written under 2 processes resumes in one.
    again = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=14")
    assert again.returncode == 0 and "resuming from step 12" in again.stderr


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "linear", "cosine", "constant"])
def test_schedules(schedule):
    cfg = load_config(TINY, [f"train.schedule={schedule}", "train.warmup_steps=10", "train.max_steps=100"]).train
    f = [lr_factor(s, cfg) for s in range(1, 101)]
    assert f[4] == pytest.approx(0.5) and max(f) == pytest.approx(1.0) and f[9] == pytest.approx(1.0)
    if schedule != "constant":
        assert f[-1] < f[20]
    no_warmup = load_config(TINY, [f"train.schedule={schedule}", "train.warmup_steps=0", "train.max_steps=100"]).train
    assert lr_factor(1, no_warmup) == pytest.approx(1.0, abs=0.02)
    # warmup_init_lr = lr: no ramp, and the same decay from warmup_steps on as the warmed-up run.
    flat = load_config(TINY, [f"train.schedule={schedule}", "train.warmup_steps=10", "train.max_steps=100",
                              f"train.warmup_init_lr={cfg.lr}"]).train  # fmt: skip
    g = [lr_factor(s, flat) for s in range(1, 101)]
    assert g[:10] == [1.0] * 10 and g[10:] == f[10:]
    half = load_config(TINY, ["train.warmup_steps=10", f"train.warmup_init_lr={cfg.lr / 2}"]).train
    assert lr_factor(1, half) == pytest.approx(0.55) and lr_factor(5, half) == pytest.approx(0.75)


def test_warmup_init_lr_above_lr():
    with pytest.raises(MtcliError, match=r"tiny.yaml: train: warmup_init_lr 0.1 is above lr"):
        load_config(TINY, ["train.warmup_init_lr=0.1", "train.lr=1e-3"])


def test_decay_schedule_needs_an_end():
    with pytest.raises(MtcliError, match=r"tiny.yaml: train: schedule cosine decays to zero at max_steps or max_time"):
        load_config(TINY, ["train.schedule=cosine", "train.max_steps=null", "train.warmup_steps=0"])
    cfg = load_config(TINY, ["train.schedule=cosine", "train.max_steps=null", "train.max_time=100s"]).train
    with pytest.raises(MtcliError, match="max_steps or train.max_time"):
        lr_factor(5, cfg)  # by time, the elapsed training time is needed


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_time_budget_decay(schedule):
    """Without max_steps, linear and cosine anneal over train.max_time of training time."""
    cfg = load_config(TINY, [f"train.schedule={schedule}", "train.max_steps=null", "train.max_time=100s",
                             "train.warmup_steps=10"]).train  # fmt: skip
    assert lr_factor(5, cfg, elapsed=1.0) == pytest.approx(0.5)  # warmup ramp caps it
    assert lr_factor(50, cfg, elapsed=0.0) == pytest.approx(1.0)
    half = lr_factor(50, cfg, elapsed=50.0)
    assert half == pytest.approx(0.5)  # linear: 1 - 0.5; cosine: (1 + cos(pi / 2)) / 2
    assert lr_factor(50, cfg, elapsed=25.0) > half > lr_factor(50, cfg, elapsed=75.0) > 0.0
    assert lr_factor(500, cfg, elapsed=100.0) == 0.0 == lr_factor(500, cfg, elapsed=130.0)


def test_time_budget_schedule_in_training(run):
    """A linear schedule over max_time: the logged lr follows 1 - (training time so far) / max_time."""
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=null",
              "--set", "train.max_time=6s", "--set", "train.schedule=linear", "--set", "train.warmup_steps=2",
              "--set", "train.log_every=1", "--set", "train.eval_every=100000")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "reached train.max_time=6s" in out.stderr
    lines = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "lr" in r]
    assert len(steps) > 4
    peak = load_config(TINY).train.lr
    for before, row in zip(steps[1:], steps[2:]):  # each update's lr uses the time before it
        assert row["lr"] == pytest.approx(peak * max(0.0, 1 - before["time"] / 6.0), rel=0.05, abs=peak * 0.02)
    assert steps[-1]["lr"] < 0.25 * peak


def test_token_batches_cover_each_pair_once_within_budget():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 500), rng.integers(1, 40, 500)
    batches = token_batches(src, tgt, 300, seed=1, epoch=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        width = int(np.maximum(src[b], tgt[b]).max()) + 1
        assert width * len(b) <= 300 or len(b) == 1
    same = token_batches(src, tgt, 300, seed=1, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same))
    other = token_batches(src, tgt, 300, seed=1, epoch=2)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(batches, other))


def test_pick_device_one_gpu_per_process(monkeypatch):
    from mtcli.training.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", local_rank=1, local_world=2) == torch.device("cuda", 1)
    assert pick_device("cpu", local_rank=1, local_world=4) == torch.device("cpu")
    with pytest.raises(MtcliError, match="4 processes on this node but 2 CUDA"):
        pick_device("auto", local_rank=3, local_world=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", local_rank=3, local_world=4) == torch.device("cpu")
    with pytest.raises(MtcliError, match="no CUDA device"):
        pick_device("cuda")


def test_patience_counts_only_gains_above_the_delta():
    from types import SimpleNamespace

    from mtcli.training.trainer import Trainer, TrainState

    fake = SimpleNamespace(t=SimpleNamespace(best_metric="valid_loss", patience_delta=0.1), state=TrainState())
    seen = []
    for step, loss in enumerate([5.0, 4.95, 4.92, 4.85, 4.90, 4.80], 1):
        fake.state.step = step
        better = Trainer.improved(fake, {"valid_loss": loss})
        seen.append((better, fake.state.bad_evals, fake.state.best))
    # 4.95 and 4.92 are new bests but gain less than 0.1 on 5.0; 4.85 gains 0.15 and restarts.
    assert seen == [(True, 0, 5.0), (True, 1, 4.95), (True, 2, 4.92), (True, 0, 4.85), (False, 1, 4.85),
                    (True, 2, 4.80)]  # fmt: skip
    fake.t.best_metric = "valid_bleu"
    fake.state = TrainState()
    assert [Trainer.improved(fake, {"valid_bleu": b}) or fake.state.bad_evals for b in (10.0, 10.05, 10.2)] == [True, True, True]
    assert fake.state.bad_evals == 0 and fake.state.best == 10.2
