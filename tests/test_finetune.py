"""Fine-tuning with train.init_from: inherited tokenizer and shape, fresh optimizer and schedule (issue 24)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import DATA, TINY, cli, rows
from safetensors.torch import load_file

BASE_STEPS = 6


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def base(run) -> Path:
    """A tiny en-de run trained for a few updates (bundle in run/model, checkpoints kept)."""
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", f"train.max_steps={BASE_STEPS}",
              "--set", "train.save_every=3", "--set", "train.eval_every=1000")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return run


def finetune_config(tmp_path: Path, init: Path, **sections) -> Path:
    """A fine-tuning config on another corpus (Multi30k's validation pairs), no model/tokenizer."""
    cfg = {
        "name": "ft",
        "run_dir": str(tmp_path / "runs" / "ft"),
        "data": {"src_lang": "en", "tgt_lang": "de", "valid_size": 50, "test_size": 0,
                 "train": {"type": "pair", "src": f"{DATA}/multi30k/val.en.gz", "tgt": f"{DATA}/multi30k/val.de.gz"}},
        "train": {"init_from": str(init), "max_steps": 4, "warmup_steps": 10, "lr": 1e-3, "log_every": 1,
                  "eval_every": 1000, "save_every": 2, "threads": 2},
    }  # fmt: skip
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("kind", ["bundle", "checkpoint"])
def test_finetune_inherits_tokenizer_and_starts_fresh(base, tmp_path, kind):
    init = base / "model" if kind == "bundle" else base / "checkpoints" / f"step_{BASE_STEPS:08d}.pt"
    config = finetune_config(tmp_path, init, model={"dropout": 0.3})
    out = cli("train", str(config))
    assert out.returncode == 0, out.stderr
    assert "fine-tuning from" in out.stderr and "starting" in out.stderr
    ft = tmp_path / "runs" / "ft"
    # SentencePiece was copied, not retrained, and the manifest says from where.
    assert sha(ft / "data" / "spm.model") == sha(base / "data" / "spm.model")
    manifest = json.loads((ft / "data" / "manifest.json").read_text())
    assert manifest["tokenizer_from"]["path"] == str(init)
    assert manifest["tokenizer_from"]["files"] == {"spm.model": sha(base / "data" / "spm.model")}
    # Shape from the initial model, dropout from this config.
    resolved = yaml.safe_load((ft / "config.yaml").read_text())
    assert resolved["model"]["d_model"] == 32 and resolved["model"]["dropout"] == 0.3
    # Step counter and warmup restart at 0: update 1 runs at lr * 1/warmup.
    lrs = rows(ft, "lr")
    assert lrs[0][0] == 1 and lrs[0][1] == pytest.approx(1e-3 / 10)
    # No optimizer state came along: Adam has taken exactly this run's updates.
    ckpt = torch.load(ft / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2 and ckpt["state"]["best"] is None
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {2.0}
    # Resuming the fine-tune resumes its own checkpoints, exactly like any run.
    again = cli("train", str(config), "--set", "train.max_steps=6")
    assert again.returncode == 0 and "resuming from step 4" in again.stderr
    assert "fine-tuning from" not in again.stderr


def test_finetune_starts_from_the_initial_weights(base, tmp_path):
    config = finetune_config(tmp_path, base / "model", train={"max_steps": 1, "lr": 1e-9, "warmup_steps": 0})
    out = cli("train", str(config))
    assert out.returncode == 0, out.stderr
    before = load_file(str(base / "model" / "model.safetensors"))
    after = load_file(str(tmp_path / "runs" / "ft" / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    for key in before:  # one update at lr 1e-9 moves no weight by more than ~1e-9
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("section,key,value", [("model", "d_model", 64), ("model", "norm", "post"),
                                               ("tokenizer", "vocab_size", 1000)])  # fmt: skip
def test_finetune_refuses_a_config_that_disagrees(base, tmp_path, section, key, value):
    config = finetune_config(tmp_path, base / "model", **{section: {key: value}})
    out = cli("train", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")][0]
    assert f"{section}.{key}" in line and "initial model" in line
    assert not (tmp_path / "runs" / "ft" / "data").exists()


def test_finetune_from_nothing_is_one_line(tmp_path):
    config = finetune_config(tmp_path, tmp_path / "no-such-bundle")
    out = cli("train", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "train.init_from" in out.stderr and "no such bundle or checkpoint" in out.stderr
