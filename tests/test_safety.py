"""Nothing lost: run locks, safe output targets, atomic writes, sweeps and hostile input (issue 21)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from run_helpers import REPO, TINY, cli

from mtcli.errors import MtcliError
from mtcli.files import LOCK_NAME, TMP_TAG, replace_file, run_lock, save_torch, sweep
from mtcli.safe_yaml import MAX_DEPTH, MAX_NODES, load_yaml
from mtcli.training.trainer import Trainer

SHORT = ["--set", "train.max_steps=4", "--set", "train.save_every=2", "--set", "train.eval_every=1000"]


def train(run: Path, *extra: str, cwd=REPO):
    return cli("train", str(TINY), "--set", f"run_dir={run}", *SHORT, *extra, cwd=cwd)


def one_error_line(out) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if TMP_TAG in p.name or p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- the run lock


def test_second_process_on_a_run_is_refused_and_a_killed_holder_frees_it(run):
    cmd = [sys.executable, "-m", "mtcli", "train", str(TINY), "--set", f"run_dir={run}", "--set",
           "train.max_steps=100000", "--set", "train.log_every=1", "--set", "train.eval_every=100000"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    try:
        while first.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1]
        for second in (train(run, "--set", "train.lr=1e-3"), cli("prepare", str(TINY), "--set", f"run_dir={run}"),
                       cli("average", str(run), "--last", "1")):  # fmt: skip
            line = one_error_line(second)
            assert str(run) in line and f"pid {first.pid}" in line and "in use" in line
        rows = metrics.read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == list(range(1, len(rows) + 1))  # one writer only
    finally:
        first.kill()  # SIGKILL: no handler runs; the kernel drops the flock
        first.communicate()
    again = train(run, "--set", "train.max_steps=2")
    assert again.returncode == 0, again.stderr


def test_lock_is_reentrant_and_an_unused_run_folder_is_removed(tmp_path):
    run = tmp_path / "runs" / "new"
    with run_lock(run):
        with run_lock(run):  # train holds it and calls prepare
            assert (run / LOCK_NAME).read_text().split() == [str(os.getpid())]
        assert (run / LOCK_NAME).exists()
    assert not run.exists()  # created by the lock and never used


def test_a_folder_of_user_files_is_not_made_a_run(tmp_path):
    home = tmp_path / "documents"
    home.mkdir()
    (home / "config.yaml").write_text("my own config")
    line = one_error_line(cli("prepare", str(TINY), "--set", f"run_dir={home}"))
    assert "not an mtcli run" in line
    assert sorted(p.name for p in home.iterdir()) == ["config.yaml"]
    assert (home / "config.yaml").read_text() == "my own config"


# ----------------------------------------------------------------------------- output targets


def test_average_refuses_user_folders_and_the_run_itself(run):
    assert train(run).returncode == 0
    mine = run.parent / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    before = sorted(p.name for p in run.rglob("*"))
    for target in (mine, run, run / "checkpoints", run / "data"):
        line = one_error_line(cli("average", str(run), "--last", "2", "-o", str(target)))
        assert "not an mtcli model bundle" in line
    assert (mine / "notes.txt").read_text() == "my own work"
    assert sorted(p.name for p in run.rglob("*")) == before
    out = run.parent / "avg"
    assert cli("average", str(run), "--last", "2", "-o", str(out)).returncode == 0
    again = cli("average", str(run), "--last", "1", "-o", str(out))
    assert again.returncode == 0 and "replaced the previous bundle" in again.stderr
    (out / "extra.txt").write_text("added by the user")  # no longer only mtcli's files
    assert "not an mtcli model bundle" in one_error_line(cli("average", str(run), "-o", str(out)))
    assert (out / "extra.txt").exists()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_user_latest_is_left_alone(run, kind):
    latest = run.parent / "latest"
    if kind == "file":
        latest.write_text("mine")
    else:
        latest.mkdir()
        (latest / "keep.txt").write_text("mine")
    out = train(run)
    assert out.returncode == 0, out.stderr
    assert "not a symlink" in out.stderr and "Traceback" not in out.stderr
    assert (latest.read_text() if kind == "file" else (latest / "keep.txt").read_text()) == "mine"
    assert (run / "model" / "model.safetensors").is_file()


def test_concurrent_translate_to_one_file(run, tmp_path):
    assert train(run).returncode == 0
    src = tmp_path / "src.txt"
    src.write_text("".join(f"A man number {i} is walking down the street.\n" for i in range(300)))
    out = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "mtcli", "translate", "-m", str(run / "model"), "-i", str(src), "-o", str(out)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    text = out.read_text()
    assert "\x00" not in text and len(text.splitlines()) == 300
    expected = cli("translate", "-m", str(run / "model"), "-i", str(src))
    assert text == expected.stdout  # one whole translation, not a mix of two
    assert no_temporaries(tmp_path)


def test_translate_output_errors_leave_nothing(run, tmp_path):
    assert train(run).returncode == 0
    model = ["-m", str(run / "model"), "A dog."]
    assert "is a directory" in one_error_line(cli("translate", *model, "-o", str(tmp_path)))
    missing = tmp_path / "no" / "such" / "out.txt"
    assert "does not exist" in one_error_line(cli("translate", *model, "-o", str(missing)))
    assert no_temporaries(tmp_path)


def test_write_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(MtcliError, match="No space left"):
        with replace_file(target) as f:
            f.write("new")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------- interrupted saves


class _SecondCtrlC:
    """Pickling it delivers SIGINT twice, in the middle of torch.save."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (0,))


def test_second_sigint_during_a_save_leaves_no_temporary(tmp_path):
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    holder = SimpleNamespace(_signal=None)
    Trainer.install_signals(holder)  # the real handler: first Ctrl-C asks to stop, second interrupts
    path = tmp_path / "step_00000002.pt"
    save_torch({"step": 1}, path)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_torch({"weights": torch.zeros(100_000), "trap": _SecondCtrlC()}, path)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert holder._signal == signal.SIGINT
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_sweep_removes_dead_temporaries_and_legacy_leftovers(run):
    assert train(run).returncode == 0
    dead = dead_pid()
    stale = [run / "checkpoints" / f".step_00000006.pt{TMP_TAG}{dead}-0a1b2c3d",
             run / "checkpoints" / ".step_00000006.pt.k2j3h4"]  # an older mtcli's mkstemp name
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (run / ".model.old").mkdir()  # an older mtcli's fixed name: made every export fail
    (run / ".model.old" / "model.safetensors").write_bytes(b"x")
    alive = run / f".notes.txt{TMP_TAG}{os.getppid()}-0a1b2c3d"  # a live process's file stays
    alive.write_text("in use")
    out = train(run, "--set", "train.max_steps=6")
    assert out.returncode == 0, out.stderr
    assert "removed what an interrupted mtcli left" in out.stderr
    assert not any(p.exists() for p in stale) and not (run / ".model.old").exists()
    assert alive.exists()
    assert sweep(run) == []  # nothing more to do


# ----------------------------------------------------------------------------- resume after crashes


def test_torn_metrics_line_is_cut_off_on_resume(run):
    assert train(run).returncode == 0
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 3.')  # a crash mid-write
    plot = cli("plot", str(run), "-o", str(run.parent / "curves.png"))
    assert plot.returncode == 0 and "incomplete" in plot.stderr
    out = train(run, "--set", "train.max_steps=6")
    assert out.returncode == 0, out.stderr
    assert "incomplete" in out.stderr and "resuming from step 4" in out.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]  # every line whole
    assert steps[-1] == 6 and steps == sorted(steps) and 5 not in steps


def test_corrupt_newest_checkpoint_resumes_from_the_previous(run):
    assert train(run).returncode == 0
    newest = run / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    out = train(run, "--set", "train.max_steps=6")
    assert out.returncode == 0, out.stderr
    assert "step_00000004.pt" in out.stderr and "resuming from step_00000002.pt instead" in out.stderr
    assert "resuming from step 2" in out.stderr


# ----------------------------------------------------------------------------- hostile input

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)  # 10^9 values once every alias is copied out, in 332 bytes


def test_alias_bomb_is_refused_by_the_expansion_cap():
    with pytest.raises(MtcliError, match="expand to more than"):
        load_yaml(BOMB, "bomb.yaml")
    # The cap itself: the mapping, two keys, x and the list are 5 values; with MAX_NODES - 5
    # aliases the document is exactly at the cap and loads, one alias more is refused.
    under = "a: &a x\nb: [" + ", ".join(["*a"] * (MAX_NODES - 5)) + "]\n"
    assert len(load_yaml(under, "under.yaml")["b"]) == MAX_NODES - 5
    over = "a: &a x\nb: [" + ", ".join(["*a"] * (MAX_NODES - 4)) + "]\n"
    with pytest.raises(MtcliError, match="expand to more than"):
        load_yaml(over, "over.yaml")


def test_deep_nesting_and_self_reference_are_one_line():
    with pytest.raises(MtcliError, match=f"deeper than {MAX_DEPTH}"):
        load_yaml("[" * 5000 + "]" * 5000, "deep.yaml")
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, "ok.yaml") is not None
    with pytest.raises(MtcliError, match="refers to itself"):
        load_yaml("a: &a [1, *a]", "loop.yaml")


def test_normal_aliases_and_merge_keys_still_work():
    text = "base: &base {lr: 1, seed: 2}\nrun:\n  <<: *base\n  seed: 3\nsame: *base\n"
    assert load_yaml(text, "ok.yaml") == {"base": {"lr": 1, "seed": 2}, "run": {"lr": 1, "seed": 3},
                                          "same": {"lr": 1, "seed": 2}}  # fmt: skip


def test_hostile_configs_from_the_command_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert "bomb.yaml" in one_error_line(cli("config", "show", str(bomb)))
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nextra: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "deeper than" in one_error_line(cli("config", "show", str(deep)))
    for override, key in [("train.max_time=.nan", "train.max_time"), ("train.max_time=-5", "train.max_time"),
                          ("train.lr=.inf", "train.lr"), ("model.max_positions=100", "model.max_positions"),
                          ("data.train={type: tsv, path: a.tsv, columns: [-1, 1]}", "data.train.columns")]:  # fmt: skip
        line = one_error_line(cli("config", "show", str(TINY), "--set", override))
        assert key in line, line
    bad_set = cli("config", "show", str(TINY), "--set", "model.d_model=" + "[" * 5000)
    assert "--set model.d_model" in one_error_line(bad_set)


def test_model_too_large_for_memory_is_refused_before_allocating(run):
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "model.d_model=65536",
              "--set", "model.d_ff=262144", "--set", "model.n_heads=2")  # fmt: skip
    line = one_error_line(out)
    assert re.search(r"[\d,]+ parameters need about [\d,.]+ GB", line) and "GB free" in line
    assert not (run / "checkpoints").exists()


def test_bundle_config_edited_to_another_function_is_detected(run, tmp_path):
    assert train(run).returncode == 0
    bundle = run / "model"
    config = bundle / "config.yaml"
    config.write_text(config.read_text().replace("activation: relu", "activation: gelu"))
    line = one_error_line(cli("translate", "-m", str(bundle), "A dog."))
    assert "config.yaml" in line and "digest" in line
    config.write_text(BOMB)
    assert "expand to more than" in one_error_line(cli("translate", "-m", str(bundle), "A dog."))


def test_no_checkpoint_is_unpickled_anywhere():
    """Every torch.load in mtcli and bench passes weights_only=True."""
    loads = []
    for path in [*REPO.glob("mtcli/**/*.py"), *REPO.glob("bench/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                loads.append((path.name, n, "weights_only=True" in line))
    assert loads and all(ok for *_, ok in loads), [x for x in loads if not x[2]]
