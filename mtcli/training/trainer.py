"""`mtcli train`: token-bucketed training with exact resume, evaluation, checkpoints and export.

Exact resume: the batch order of an epoch is a pure function of (seed, epoch), and a checkpoint
stores the model, optimizer, step, data position (epoch, batches consumed) and RNG state, so a
resumed run replays the same updates as an uninterrupted one. Under torchrun every rank takes
its own batches of each update (DDP averages the gradients); only rank 0 logs and writes.
"""

from __future__ import annotations

import ctypes
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch

from mtcli.data.batching import collate, token_batches
from mtcli.data.manifest import Manifest
from mtcli.data.splits import load_pair
from mtcli.data.subword import epoch_seed, subword_samplers
from mtcli.errors import MtcliError, RunFailure
from mtcli.model.transformer import build_model
from mtcli.training.checkpoints import (
    atomic_save,
    load_newest,
    prune,
    shape_mismatch,
    step_checkpoints,
)
from mtcli.training.distributed import Dist
from mtcli.training.gradnorms import sublayer_grad_norms
from mtcli.training.memory import check_memory
from mtcli.training.optim import build_optimizer, label_smoothed_nll, lr_factor, set_lr
from mtcli.training.progress import Display, MetricsLog


def keep_freed_memory() -> bool:
    """Make glibc malloc keep and reuse freed memory (CPU training); False outside glibc."""
    # By default every block over 32 MB (the logits and their gradient are ~128 MB at 4k tokens)
    # is a fresh mmap, unmapped when freed, so each step faulted in ~100k new pages: ~10% of a
    # base-size step. With mmap and trimming off, the next step reuses the heap the last one freed.
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


@dataclass
class TrainState:
    """The loop's position and bookkeeping; saved in every checkpoint as a plain dict."""

    step: int = 0  # optimizer updates done
    epoch: int = 1
    batch_pos: int = 0  # batches of this epoch already consumed (all ranks together)
    elapsed: float = 0.0  # training seconds, the clock of train.max_time and time-based schedules
    tokens: int = 0  # target tokens trained on
    best: float | None = None  # best value of train.best_metric so far
    best_step: int | None = None
    bad_evals: int = 0  # evaluations without a gain of more than train.patience_delta (patience)
    patience_ref: float | None = None  # the value at the last such gain
    skipped: int = 0  # updates dropped for a non-finite loss or gradient
    bad_run: int = 0  # of those, how many in a row

    def saved(self) -> dict:
        """The checkpoint form."""
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainState:
        """From a checkpoint's `state` (keys an older version did not write keep their start value)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class Trainer:
    """Owns the model, optimizer, data and the loop state for one run directory."""

    def __init__(self, cfg, manifest: Manifest, dist: Dist):
        self.cfg, self.t, self.dist = cfg, cfg.train, dist
        if dist.device.type == "cpu":
            keep_freed_memory()
        self.run = cfg.run_path
        self.data_dir = self.run / "data"
        self.ckpt_dir = self.run / "checkpoints"
        self.ids = dict(manifest.ids)
        self.vocab = manifest.vocab
        self.train_src, self.train_tgt = load_pair(self.data_dir, "train", manifest.dtype)
        self.valid = load_pair(self.data_dir, "valid", manifest.dtype) if "valid" in manifest.splits else None
        began = time.time()
        self.samplers = subword_samplers(self.data_dir, manifest, (self.train_src, self.train_tgt), self.t)
        self.sampler_seconds = time.time() - began  # counted in the training time by `fit`
        self.epoch_src, self.epoch_tgt = self.train_src, self.train_tgt
        torch.manual_seed(self.t.seed)
        check_memory(cfg, self.vocab, dist.device)
        self.model = build_model(cfg.model, self.vocab).to(dist.device)
        self.optimizer = build_optimizer(self.model.parameters(), self.t)
        self.amp_dtype, self.scaler = self._amp()
        self.net = dist.wrap(self.model)
        if self.t.compile:
            self.net = torch.compile(self.net)
        self.state = TrainState()
        self.stop_reason: str | None = None
        self._signal: int | None = None

    def _amp(self):
        kind = self.t.amp
        if self.dist.device.type != "cuda" or kind == "none":
            return None, None
        if kind == "auto":
            kind = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        dtype = torch.bfloat16 if kind == "bf16" else torch.float16
        return dtype, torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        """The whole training state (loadable with weights_only=True)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "state": self.state.saved(),
                "rng": rng, "config": self.cfg.model_dump(mode="json"), "vocab": self.vocab.saved()}  # fmt: skip

    def save(self) -> None:
        """Write step_XXXXXXXX.pt atomically and prune old ones (rank 0)."""
        if self.dist.rank == 0:
            atomic_save(self.checkpoint(), self.ckpt_dir / f"step_{self.state.step:08d}.pt")
            prune(self.ckpt_dir, self.t.keep_last)
        self.dist.barrier()

    def resume(self) -> bool:
        """Load the newest checkpoint if there is one; refuse one of a different model shape."""
        found = step_checkpoints(self.ckpt_dir)
        if not found:
            return False
        newest, ckpt = load_newest(found, lambda text: print(text, file=sys.stderr, flush=True))
        diffs = shape_mismatch(ckpt.get("config", {}), self.cfg.model_dump(mode="json"))
        if ckpt.get("vocab") != self.vocab.saved():
            diffs.append(f"vocabulary ({ckpt.get('vocab')} -> {self.vocab.saved()})")
        if diffs:
            raise MtcliError(f"{newest}: config changes the model shape: {'; '.join(diffs)}; "
                             "use --restart to train from scratch")  # fmt: skip
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState.from_saved(ckpt["state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        return True

    def start_from(self, init) -> None:
        """Fine-tuning: the initial model's weights; optimizer, schedule and state stay fresh."""
        from mtcli.finetune import load_weights

        if init.vocab != self.vocab.saved():
            raise MtcliError(f"train.init_from {init.path}: its vocabulary {init.vocab} differs from the "
                             f"prepared data's {self.vocab.saved()}; run `mtcli prepare --force`")  # fmt: skip
        load_weights(self.model, init)

    # ------------------------------------------------------------------ one update

    def _micro_batches(self, batches: list) -> list | None:
        """This rank's batches of the next update, or None when the epoch has too few left."""
        world, uf, pos = self.dist.world, self.t.update_freq, self.state.batch_pos
        if pos + world * uf > len(batches):
            return None
        self.state.batch_pos = pos + world * uf
        return [batches[pos + self.dist.rank + world * j] for j in range(uf)]

    def update(self, indices: list) -> dict | None:
        """Forward/backward over this update's micro-batches and an optimizer step."""
        dev = self.dist.device
        micro = [collate(self.epoch_src, self.epoch_tgt, idx, self.ids) for idx in indices]
        ntok = self.dist.sum(float(sum(int(b["ntokens"]) for b in micro)))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = nll_sum = 0.0
        for i, b in enumerate(micro):
            with self.dist.no_sync(self.net, last=i == len(micro) - 1), self._autocast():
                logits = self.net(b["src"].to(dev), b["tgt_in"].to(dev))
                loss, nll = label_smoothed_nll(logits, b["tgt_out"].to(dev), self.t.label_smoothing, self.vocab.pad_id)
            scaled = loss * self.dist.world / ntok
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum, nll_sum = loss_sum + float(loss.detach()), nll_sum + float(nll)
        return self._step(self.dist.sum(loss_sum) / ntok, self.dist.sum(nll_sum) / ntok, ntok)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _step(self, loss: float, nll: float, ntok: float) -> dict | None:
        step = self.state.step + 1
        lr = self.t.lr * lr_factor(step, self.t, self.state.elapsed)
        set_lr(self.optimizer, lr)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        layer_norms = sublayer_grad_norms(self.model) if step % self.t.grad_norm_every == 0 else None
        clip = self.t.clip_norm if self.t.clip_norm > 0 else float("inf")
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            return self._skip(step, loss)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state.step, self.state.tokens, self.state.bad_run = step, self.state.tokens + int(ntok), 0
        row = {"loss": loss, "nll": nll, "lr": lr, "grad_norm": gnorm, "ntokens": int(ntok)}
        if layer_norms:
            row["layer_grad_norms"] = layer_norms
        return row

    def _skip(self, step: int, loss: float) -> None:
        """A NaN/inf loss or gradient: drop the update; stop if it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:  # fp16 overflow is routine: the scaler lowers its scale and we retry
            self.scaler.update()
        self.state.skipped += 1
        self.state.bad_run += 1
        if self.state.bad_run >= self.t.max_bad_steps:
            raise RunFailure(f"loss is not finite ({loss}) for {self.state.bad_run} updates in a row at "
                             f"step {step}: the run diverged; lower train.lr or raise train.warmup_steps")  # fmt: skip
        return None

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, translator_factory) -> dict:
        """Validation loss/perplexity and, if enabled, BLEU/chrF of the search output (rank 0)."""
        from mtcli.training.validation import read_lines, valid_bleu, valid_loss

        row = valid_loss(self.model, *self.valid, self.ids, self.t.max_tokens, self.t.label_smoothing,
                         self.dist.device)  # fmt: skip
        if self.t.eval_bleu and (self.data_dir / "valid.src.txt").exists():
            n = self.t.eval_max_sentences
            src = read_lines(self.data_dir / "valid.src.txt", n)
            ref = read_lines(self.data_dir / "valid.tgt.txt", n)
            row.update(valid_bleu(translator_factory(), src, ref))
        return row

    def improved(self, row: dict) -> bool:
        """Track the best value of `train.best_metric` and the patience counter."""
        value = row.get(self.t.best_metric)
        if value is None:
            return False
        sign = 1.0 if self.t.best_metric != "valid_loss" else -1.0  # higher BLEU is better, lower loss
        s = self.state
        # Patience restarts only when the value beats the one of the last restart by more than
        # patience_delta, so many tiny gains still end the run (the best checkpoint takes them all).
        ref = s.best if s.patience_ref is None else s.patience_ref  # checkpoints before patience_ref
        if ref is None or sign * (value - ref) > self.t.patience_delta:
            s.patience_ref, s.bad_evals = value, 0
        else:
            s.bad_evals += 1
        if s.best is None or sign * (value - s.best) > 0:
            s.best, s.best_step = value, s.step
            return True
        return False

    # ------------------------------------------------------------------ the loop

    def epoch_batches(self) -> list:
        """The current epoch's data (re-segmented when sampling subwords) and its batch order."""
        epoch = self.state.epoch
        if self.samplers:
            self.epoch_src, self.epoch_tgt = (
                sampler.sample(epoch_seed(self.t.seed, epoch, side)) for side, sampler in enumerate(self.samplers)
            )
        return token_batches(self.epoch_src.lengths, self.epoch_tgt.lengths, self.t.max_tokens, self.t.seed, epoch)

    def limits_reached(self) -> str | None:
        """Why training should stop now, or None."""
        s, t = self.state, self.t
        if t.max_steps and s.step >= t.max_steps:
            return f"reached train.max_steps={t.max_steps}"
        if t.max_time and s.elapsed >= t.max_time:
            return f"reached train.max_time={t.max_time:.0f}s"
        if t.max_epochs and s.epoch > t.max_epochs:
            return f"reached train.max_epochs={t.max_epochs}"
        if t.patience and s.bad_evals >= t.patience:
            gain = f" of more than {t.patience_delta:g}" if t.patience_delta else ""
            return f"no {t.best_metric} improvement{gain} in {t.patience} evaluations (early stop)"
        if self._signal is not None:
            return f"stopped by {signal.Signals(self._signal).name}"
        return None

    def install_signals(self) -> None:
        """SIGINT/SIGTERM finish the current update, save a checkpoint and exit."""

        def handler(signum, _frame):
            if self._signal is not None:  # second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self._signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    def fit(self, display: Display, log: MetricsLog | None, make_translator) -> None:
        """Run updates until a limit, evaluating and checkpointing on schedule."""
        s, t = self.state, self.t
        start_step, last_save = s.step, s.step
        tick, tick_tokens, losses = time.time(), 0, []
        batches = self.epoch_batches()
        s.elapsed += time.time() - tick + self.sampler_seconds
        while (reason := self.limits_reached()) is None:
            began = time.time()
            indices = self._micro_batches(batches)
            if indices is None:  # epoch over: the next one reshuffles (and re-samples) with (seed, epoch)
                s.epoch, s.batch_pos = s.epoch + 1, 0
                batches = self.epoch_batches()
                s.elapsed += time.time() - began
                continue
            row = self.update(indices)
            s.elapsed += time.time() - began
            if self.dist.world > 1:  # one clock for all ranks: max_time stops and time-decayed lr agree
                s.elapsed = self.dist.sum(s.elapsed) / self.dist.world
            self._check_signal()
            if row is None:
                continue
            tick_tokens += row["ntokens"]
            losses.append(row["loss"])
            step = s.step
            if step % t.log_every == 0 or step == t.max_steps:
                now = time.time()
                # `loss` is the mean over the updates since the last row, `step_loss` this update's.
                row.update(step=step, epoch=s.epoch, time=round(s.elapsed, 2), step_loss=row["loss"],
                           loss=sum(losses) / len(losses), tokens_per_s=tick_tokens / max(now - tick, 1e-9))  # fmt: skip
                tick, tick_tokens, losses = now, 0, []
                self._log(log, row)
                display.update(row, s.epoch, start_step, s.elapsed)
            if self.valid is not None and step % t.eval_every == 0:
                self._evaluate(display, log, make_translator)
            if step % t.save_every == 0:
                self.save()
                last_save = step
        self.stop_reason = reason
        if self.valid is not None and s.step % t.eval_every and s.step > start_step:
            self._evaluate(display, log, make_translator)
        if s.step != last_save or not step_checkpoints(self.ckpt_dir):
            self.save()

    def _check_signal(self) -> None:
        # Ranks must agree on stopping, or one would wait forever in the next all-reduce.
        if self.dist.world > 1:
            flag = self.dist.sum(1.0 if self._signal is not None else 0.0)
            if flag and self._signal is None:
                self._signal = signal.SIGTERM

    def _log(self, log: MetricsLog | None, row: dict) -> None:
        if log is not None:
            log.write({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})

    def _evaluate(self, display: Display, log: MetricsLog | None, make_translator) -> None:
        if self.dist.rank == 0:
            row = {"step": self.state.step, "time": round(self.state.elapsed, 2)}
            row.update(self.evaluate(make_translator))
            better = self.improved(row)
            row["best"] = self.state.best
            self._log(log, row)
            display.eval(row)
            if better:
                atomic_save(self.checkpoint(), self.ckpt_dir / "best.pt")
        if self.dist.world > 1:  # in place: `fit` holds the state object
            for key, value in self.dist.broadcast_state(self.state.saved()).items():
                setattr(self.state, key, value)
