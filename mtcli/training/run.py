"""`mtcli train`: prepare if needed, train or resume, export the bundle and point runs/latest at it."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import torch

import mtcli.finetune as finetune
from mtcli.data.manifest import read_manifest
from mtcli.errors import MtcliError
from mtcli.files import run_lock, write_text
from mtcli.inference.bundle import check_target, export_bundle, link_latest
from mtcli.model.transformer import build_model, spec_digest
from mtcli.training.checkpoints import average_state_dicts, load_checkpoint, step_checkpoints
from mtcli.training.distributed import Dist
from mtcli.training.progress import Display, MetricsLog
from mtcli.training.trainer import Trainer


def _translator_factory(trainer: Trainer):
    """Builds a greedy (or eval_beam_size) Translator over the live model for validation BLEU."""
    from mtcli.data.spm import Tokenizer
    from mtcli.inference.search import SearchParams
    from mtcli.inference.translator import Translator

    tok = Tokenizer(trainer.data_dir)
    decode = trainer.cfg.decode

    def make():
        params = SearchParams.from_decode(decode, tok, beam=trainer.t.eval_beam_size, nbest=1)
        return Translator(trainer.model, tok, params, decode.max_tokens, decode.workers, trainer.dist.device)

    return make


def run_train(cfg, restart: bool = False) -> Path | None:
    """The `mtcli train` command: lock the run, prepare if needed, train or resume, export."""
    dist = Dist.setup(cfg.train.device, cfg.train.threads)
    try:
        with contextlib.ExitStack() as stack:
            _lock_for_job(stack, cfg.run_path, dist)
            return _train_locked(cfg, restart, dist)
    finally:
        dist.cleanup()


def _lock_for_job(stack: contextlib.ExitStack, run_path: Path, dist: Dist) -> None:
    """Rank 0 takes the run lock for the whole torchrun job; every rank stops if it cannot."""
    failure = None
    if dist.rank == 0:
        try:
            stack.enter_context(run_lock(run_path))  # prepare, called next, sweeps the run
        except MtcliError as exc:
            failure = exc
    if dist.sum(1.0 if failure else 0.0):
        raise failure or MtcliError(f"{run_path}: rank 0 could not lock the run")


def _restart(ckpt_dir: Path) -> None:
    """--restart: remove the run's checkpoints (only the files training writes there)."""
    for path in [*step_checkpoints(ckpt_dir), ckpt_dir / "best.pt"]:
        path.unlink(missing_ok=True)


def _train_locked(cfg, restart: bool, dist: Dist) -> Path | None:
    from mtcli.config import to_yaml
    from mtcli.data.prepare import run_prepare

    cfg, init = finetune.resolve(cfg)
    if dist.rank == 0:
        check_target(cfg.run_path / "model", "bundle")  # refuse now, not after hours of training
        run_prepare(cfg, init=init)  # the initial model read once, not again
    dist.barrier()
    manifest = read_manifest(cfg.run_path / "data")
    if restart and dist.rank == 0:
        _restart(cfg.run_path / "checkpoints")
    dist.barrier()
    trainer = Trainer(cfg, manifest, dist)
    resumed = trainer.resume()
    display = Display(cfg.train.max_steps, cfg.train.max_time, enabled=dist.rank == 0)
    if init is not None and not resumed:
        trainer.start_from(init)
        display.message(f"fine-tuning from {init.path}: its weights and tokenizer, a fresh optimizer, "
                        "schedule and data position")  # fmt: skip
    if dist.rank == 0:
        write_text(cfg.run_path / "config.yaml", to_yaml(cfg))
        n_params = sum(p.numel() for p in trainer.model.parameters())
        how = f"resuming from step {trainer.state.step}" if resumed else "starting"
        display.message(f"{how}: {n_params:,} parameters, {len(trainer.train_src):,} training pairs, "
                        f"device {dist.device}, {dist.world} process(es), {torch.get_num_threads()} threads")  # fmt: skip
        if trainer.samplers:
            t = cfg.train
            display.message(f"subword sampling each epoch: alpha {t.subword_alpha}, nbest {t.subword_nbest} "
                            f"(n-best lists in {trainer.sampler_seconds:.1f}s)")
    log = None
    if dist.rank == 0:
        log = MetricsLog(cfg.run_path / "metrics.jsonl", trainer.state.step if resumed else None, display.message)
    trainer.install_signals()
    try:
        trainer.fit(display, log, _translator_factory(trainer))
    finally:
        display.close()
        if log:
            log.close()
    return _finish(trainer, display)


def _finish(trainer: Trainer, display: Display) -> Path | None:
    """Export (rank 0), print the summary, and exit non-zero after a signal."""
    s = trainer.state
    bundle, latest = export(trainer) if trainer.dist.rank == 0 else (None, None)
    trainer.dist.barrier()
    if trainer.dist.rank == 0:
        best = f", best {trainer.t.best_metric} {s.best} at step {s.best_step}" if s.best is not None else ""
        display.message(f"done: {trainer.stop_reason}; step {s.step}, epoch {s.epoch}, {s.tokens:,} target "
                        f"tokens in {s.elapsed:.0f}s{best}; skipped updates {s.skipped}")  # fmt: skip
        display.message(f"model bundle: {bundle}" + (f" ({latest} points to it)" if latest else ""))
    if trainer._signal is not None:
        if trainer.dist.rank == 0:
            display.message(f"interrupted: checkpoint saved at step {s.step}; resume with "
                            f"`mtcli train <config>` (same config) or start over with --restart")  # fmt: skip
        raise SystemExit(130 if trainer._signal == signal.SIGINT else 143)
    return bundle


def export(trainer: Trainer) -> tuple[Path, Path | None]:
    """Write the model bundle (averaged, best or last weights); point runs/latest at it if allowed."""
    from mtcli import __version__

    t, weights, source = trainer.t, None, f"last (step {trainer.state.step})"
    numbered = step_checkpoints(trainer.ckpt_dir)
    if t.average_last > 1 and len(numbered) > 1:
        chosen = numbered[-t.average_last :]
        weights, source = average_state_dicts(chosen), f"average of {len(chosen)} last checkpoints"
    elif (trainer.ckpt_dir / "best.pt").exists():
        weights = load_checkpoint(trainer.ckpt_dir / "best.pt")["model"]
        source = f"best {t.best_metric} (step {trainer.state.best_step})"
    model = build_model(trainer.cfg.model, trainer.vocab)
    model.load_state_dict(weights if weights is not None else trainer.model.state_dict())
    meta = {**trainer.vocab.saved(), **trainer.ids, "step": trainer.state.step, "weights": source,
            "best": trainer.state.best, "best_metric": t.best_metric, "mtcli": __version__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "src_lang": trainer.cfg.data.src_lang, "tgt_lang": trainer.cfg.data.tgt_lang}  # fmt: skip
    bundle = trainer.run / "model"
    digest = spec_digest(trainer.cfg.model, trainer.vocab)
    export_bundle(model, trainer.cfg.model_dump(mode="json"), trainer.data_dir, bundle, meta, digest)
    return bundle, link_latest(bundle)
