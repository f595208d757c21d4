"""`mtcli plot`: training curves of one or more runs side by side, from their metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

from mtcli.analysis.figures import require_matplotlib, save_figure
from mtcli.errors import MtcliError
from mtcli.files import check_output
from mtcli.training.progress import read_rows

PANELS = [
    ("loss", "step", "training loss"),
    ("valid_loss", "step", "validation loss"),
    ("valid_bleu", "time", "validation BLEU"),
    ("lr", "step", "learning rate"),
    ("grad_norm", "step", "gradient norm (before clipping)"),
    ("tokens_per_s", "step", "target tokens / s"),
]


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (a clear error if it is missing or damaged)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MtcliError(f"{path}: no metrics; is {run_dir} a run directory (runs/<name>)?")
    return read_rows(path, lambda text: print(text, file=sys.stderr))


def run_plot(run_dirs: list[Path], output: Path, labels: list[str] | None = None) -> Path:
    """Draw the PANELS for every run into one PNG."""
    check_output(output, "--output")
    runs = [(labels[i] if labels and i < len(labels) else Path(d).name, read_metrics(d)) for i, d in enumerate(run_dirs)]
    return plot_rows(runs, output)


def plot_rows(runs: list[tuple[str, list[dict]]], output: Path) -> Path:
    """Draw the PANELS for (label, metrics rows) pairs into one PNG."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, x, title) in zip(axes.flat, PANELS):
        for label, rows in runs:
            pts = [(r[x], r[key]) for r in rows if key in r and x in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=label, marker="." if len(pts) < 40 else None)
        ax.set(title=title, xlabel="wall time (s)" if x == "time" else "step")
        if key in ("loss", "valid_loss", "grad_norm"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
    return Path(output)
