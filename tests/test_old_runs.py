"""Runs and bundles written before the layout by stage (tests/fixtures/v0_run) keep loading.

No saved file names a module path (safetensors + YAML/JSON bundles, weights_only checkpoints);
these tests prove it on files that the earlier code wrote (see tests/fixtures/make_v0_run.sh).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from run_helpers import TINY, cli

from mtcli.config import config_from_dict
from mtcli.data.manifest import Vocab
from mtcli.inference.bundle import load_bundle
from mtcli.model.transformer import build_model
from mtcli.training.checkpoints import load_checkpoint

V0 = Path(__file__).parent / "fixtures" / "v0_run"
SENTENCES = ["A man is riding a bicycle.", "Two dogs play in the snow.", "A woman reads a book."]


def test_old_bundle_loads_and_matches_its_checkpoint():
    model, cfg, tok, meta = load_bundle(V0 / "model")
    ckpt = load_checkpoint(V0 / "step_00000006.pt")
    assert meta["step"] == ckpt["state"]["step"] == 6
    # The bundle holds the step-6 weights; rebuilt from the checkpoint alone, the model is the same.
    ckpt_cfg = config_from_dict(ckpt["config"], "checkpoint")
    rebuilt = build_model(ckpt_cfg.model, Vocab.from_saved(ckpt["vocab"]))
    rebuilt.load_state_dict(ckpt["model"])
    bundle_state = model.state_dict()
    assert set(bundle_state) == set(rebuilt.state_dict())
    assert all(torch.equal(bundle_state[k], v) for k, v in rebuilt.state_dict().items())
    # ... and it translates: one line out per line in, ids within the vocabulary.
    src = torch.tensor([ids + [tok.eos_id] for ids in tok.encode_src(SENTENCES[:1])])
    logits = model(src, torch.tensor([[tok.bos_id]]))
    assert logits.shape == (1, 1, meta["tgt_vocab"]) and torch.isfinite(logits).all()


def test_old_bundle_translates_from_the_command_line():
    out = cli("translate", *SENTENCES, "--model", str(V0 / "model"), "--beam", "2")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(SENTENCES)


def test_old_checkpoint_resumes(run):
    """A step-6 checkpoint of the earlier code resumes in today's trainer on the same prepared data."""
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir()
    shutil.copy(V0 / "step_00000006.pt", ckpt_dir / "step_00000006.pt")
    out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=8",
              "--set", "train.eval_every=1000")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "resuming from step 6" in out.stderr
    assert load_checkpoint(ckpt_dir / "step_00000008.pt")["state"]["step"] == 8
