"""Figure helpers shared by `mtcli gradients` and `mtcli plot`: matplotlib on demand, atomic saves."""

from __future__ import annotations

from pathlib import Path

from mtcli.errors import MtcliError


def require_matplotlib():
    """matplotlib, or a clear error saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MtcliError("plotting needs matplotlib: pip install 'mtcli[plot]' (or pip install matplotlib)") from None
    return plt


def save_figure(fig, output: Path) -> None:
    """Save a figure through a temporary file and a rename."""
    output = Path(output)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    fig.savefig(tmp, dpi=110)
    tmp.replace(output)


def write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
