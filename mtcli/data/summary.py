"""What `prepare` shows on stderr: a rich progress display per long step and a summary table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux; 0.0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * _PAGE / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return 0.0


@contextmanager
def progress_display(console: Console) -> Iterator[Progress]:
    """One line per step (spinner, description, bar, count, elapsed), removed if the step fails
    so that a failure ends with just its `error:` line."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    progress.start()
    try:
        yield progress
    except BaseException:
        progress.live.transient = True
        raise
    finally:
        progress.stop()


def print_summary(console: Console, manifest: dict, data_dir: Path) -> None:
    """Pairs kept per split, drops per reason, tokens and vocabulary."""
    table = Table(title=f"prepared {manifest['src_lang']}-{manifest['tgt_lang']} in {data_dir}")
    for name in ("split", "source", "read", "kept", "dropped", "src tokens", "tgt tokens"):
        table.add_column(name, justify="left" if name in ("split", "source") else "right")
    for split, stats in manifest["splits"].items():
        dropped = sum(manifest["filters"][split].values())
        source = "carved" if stats["source"] != split else "own"
        table.add_row(split, source, f"{stats['read']:,}", f"{stats['pairs']:,}", f"{dropped:,}",
                      f"{stats['src_tokens']:,}", f"{stats['tgt_tokens']:,}")  # fmt: skip
    console.print(table)
    carved = [f"{split} {s['pairs']:,}" for split, s in manifest["splits"].items() if s["source"] != split]
    if carved:
        console.print(f"carved from train (grouped by source sentence): {', '.join(carved)}")
    for split, reasons in manifest["filters"].items():
        if any(reasons.values()):
            text = ", ".join(f"{reason} {n:,}" for reason, n in reasons.items() if n)
            console.print(f"dropped from {split}: {text}", highlight=False)
    vocab = manifest["vocab"]
    sizes = (f"{vocab['src_size']:,}" if vocab["joint"]
             else f"{vocab['src_size']:,} src + {vocab['tgt_size']:,} tgt")  # fmt: skip
    console.print(
        f"vocabulary: {'joint' if vocab['joint'] else 'separate'} {vocab['type']} {sizes} "
        f"({manifest['dtype']}); {manifest['seconds']['total']:.1f}s",
        highlight=False,
    )
