"""Figure helpers shared by `mtcli gradients` and `mtcli plot`: matplotlib on demand, atomic saves."""

from __future__ import annotations

from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.files import replace_file


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
    """Save a figure through `files.replace_file` (format from the suffix, PNG by default)."""
    output = Path(output)
    fmt = output.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise MtcliError(f"{output}: cannot draw a .{fmt} file; use .png, .svg or .pdf")
    with replace_file(output, binary=True) as f:
        fig.savefig(f, format=fmt, dpi=110)
