"""Training output: metrics.jsonl rows, a rich live display on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.files import write_text


def fmt_time(seconds: float | None) -> str:
    """'1h02m' / '3m07s' / '42s'."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def read_rows(path: Path, warn: Callable[[str], None]) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a crash mid-write) is skipped with a warning."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[n:]):
                raise MtcliError(f"{path}: line {n}: not valid JSON (mtcli writes one object a line)") from None
            warn(f"warning: {path}: line {n} is incomplete (a run stopped while writing it); skipped")
    return rows


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only), flushed row by row."""

    def __init__(self, path: Path, resume_step: int | None, warn: Callable[[str], None]):
        self.path = path
        if resume_step is not None and path.exists():
            # Rows past the checkpoint were written by the interrupted run and will be replayed;
            # a torn last line is cut off here, so the log stays one object a line.
            keep = [r for r in read_rows(path, warn) if r.get("step", 0) <= resume_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
        elif resume_step is None:
            path.unlink(missing_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.tb = _tensorboard(path.parent / "tensorboard")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, row["step"])
                elif isinstance(value, dict):  # layer_grad_norms
                    for sub, v in value.items():
                        self.tb.add_scalar(f"{key}/{sub}", v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard(log_dir: Path):
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


class Display:
    """Live progress on stderr: a rich bar on a terminal, one plain line per log interval otherwise."""

    def __init__(self, total_steps: int | None, max_time: float | None, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.total, self.max_time = total_steps, max_time
        self.last_eval = ""
        self.live = None
        self.start = time.time()
        if enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def _eta(self, step: int, start_step: int, elapsed: float, run_elapsed: float) -> float | None:
        etas = []
        if self.total and step > start_step:
            etas.append((self.total - step) * run_elapsed / (step - start_step))
        if self.max_time:
            etas.append(self.max_time - elapsed)
        return max(0.0, min(etas)) if etas else None

    def update(self, row: dict, epoch: int, start_step: int, elapsed: float) -> None:
        """Show a training row (step, loss, lr, tokens_per_s)."""
        if not self.enabled:
            return
        step = row["step"]
        eta = self._eta(step, start_step, elapsed, time.time() - self.start)
        total = f"/{self.total}" if self.total else ""
        text = (
            f"step {step}{total}  epoch {epoch}  loss {row['loss']:.3f}  lr {row['lr']:.2e}  "
            f"{row['tokens_per_s']:,.0f} tok/s  elapsed {fmt_time(elapsed)}  eta {fmt_time(eta)}"
        )
        if self.live is not None:
            from rich.progress_bar import ProgressBar
            from rich.table import Table

            grid = Table.grid(padding=(0, 1))
            frac = step / self.total if self.total else (elapsed / self.max_time if self.max_time else 0)
            grid.add_row(ProgressBar(total=1.0, completed=min(frac, 1.0), width=30), text)
            if self.last_eval:
                grid.add_row("", self.last_eval)
            self.live.update(grid)
        else:
            print(text, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A line above the live display (evaluations, checkpoints, warnings)."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False)

    def eval(self, row: dict) -> None:
        """Remember and print an evaluation row."""
        parts = [f"valid loss {row['valid_loss']:.3f}", f"ppl {row['valid_ppl']:.2f}"]
        if "valid_bleu" in row:
            parts += [f"BLEU {row['valid_bleu']:.2f}", f"chrF {row['valid_chrf']:.2f}"]
        self.last_eval = f"[step {row['step']}] " + "  ".join(parts)
        self.message(self.last_eval)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
