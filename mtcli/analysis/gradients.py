"""`mtcli gradients`: per-layer gradient norms for several norm placements on real batches.

For each placement and depth, a model is built from the config (same seed), optionally trained
for a few updates, and the gradient of the loss on real training batches is taken. The L2 norm
of each sublayer's weight gradient is reported per layer: the measurement of Xiong et al. 2020
(Fig. 3), where post-LN's gradients grow toward the top layers and pre-LN's stay flat.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtcli.analysis.figures import require_matplotlib, save_figure
from mtcli.config import NORM_PLACEMENTS
from mtcli.data.manifest import Manifest
from mtcli.errors import MtcliError
from mtcli.files import check_output, write_text


def _batches(cfg, manifest: Manifest, n: int):
    from mtcli.data.batching import collate, token_batches
    from mtcli.data.manifest import SPECIAL
    from mtcli.data.splits import load_pair

    src, tgt = load_pair(cfg.run_path / "data", "train", manifest.dtype)
    ids = SPECIAL
    order = token_batches(src.lengths, tgt.lengths, cfg.train.max_tokens, cfg.train.seed, 1)
    return [collate(src, tgt, idx, ids) for idx in order[:n]]


def measure(cfg, manifest: Manifest, norm: str, layers: int | None, batches: list, steps: int = 0) -> dict:
    """Mean per-sublayer gradient norms over `batches` after `steps` updates from init."""
    import torch

    from mtcli.model.transformer import build_model
    from mtcli.training.gradnorms import sublayer_grad_norms
    from mtcli.training.optim import build_optimizer, label_smoothed_nll, lr_factor, set_lr

    shape = {"norm": norm}
    if layers:
        shape.update(encoder_layers=layers, decoder_layers=layers)
    model_cfg = cfg.model.model_copy(update=shape)
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg, manifest.vocab).train()
    opt = build_optimizer(model.parameters(), cfg.train)

    def grad(batch):
        model.zero_grad(set_to_none=True)
        logits = model(batch["src"], batch["tgt_in"])
        loss, _ = label_smoothed_nll(logits, batch["tgt_out"], cfg.train.label_smoothing, manifest.vocab.pad_id)
        (loss / batch["ntokens"]).backward()
        return float(loss.detach() / batch["ntokens"])

    for step in range(1, steps + 1):
        grad(batches[(step - 1) % len(batches)])
        set_lr(opt, cfg.train.lr * lr_factor(step, cfg.train, elapsed=0.0))  # early steps: start of a time budget
        opt.step()
    totals: dict[str, float] = {}
    losses = []
    for batch in batches:
        losses.append(grad(batch))
        for key, value in sublayer_grad_norms(model).items():
            totals[key] = totals.get(key, 0.0) + value / len(batches)
    n_enc, n_dec = model_cfg.encoder_layers, model_cfg.decoder_layers
    return {"norm": norm, "encoder_layers": n_enc, "decoder_layers": n_dec, "steps": steps,
            "loss": sum(losses) / len(losses), "grad_norms": totals}  # fmt: skip


def run_gradients(cfg, norms: list[str], layers: list[int | None], n_batches: int, steps: int,
                  output: Path | None, json_path: Path | None) -> list[dict]:
    """The `mtcli gradients` command: measure, print a table, write JSON and a PNG plot."""
    from mtcli.data.prepare import run_prepare

    bad = [n for n in norms if n not in NORM_PLACEMENTS]
    if bad:
        raise MtcliError(f"--norm {bad[0]!r}: expected one of {', '.join(NORM_PLACEMENTS)}")
    if output is not None:
        require_matplotlib()
        check_output(output, "--output")
    if json_path is not None:
        check_output(json_path, "--json")
    manifest = Manifest.from_dict(run_prepare(cfg))
    batches = _batches(cfg, manifest, n_batches)
    results = [measure(cfg, manifest, norm, n, batches, steps) for n in layers for norm in norms]
    print_table(results)
    if json_path is not None:
        write_text(json_path, json.dumps(results, indent=2))
    if output is not None:
        plot_gradients(results, output)
    return results


def print_table(results: list[dict]) -> None:
    """Rich tables on stdout, one per depth: a row per layer, attention and FFN norms per placement."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for depth in sorted({r["encoder_layers"] for r in results}):
        group = [r for r in results if r["encoder_layers"] == depth]
        steps = group[0]["steps"]
        when = "at init" if not steps else f"after {steps} updates"
        table = Table(title=f"gradient norm per layer, {depth}+{depth} layers, {when}")
        table.add_column("layer")
        for r in group:
            table.add_column(f"{r['norm']}\nattn", justify="right")
            table.add_column(f"{r['norm']}\nffn", justify="right")
        for stack, n in (("encoder", depth), ("decoder", group[0]["decoder_layers"])):
            for i in range(n):
                cells = []
                for r in group:
                    g = r["grad_norms"]
                    cells += [f"{g.get(f'{stack}.{i}.self_attn', float('nan')):.3g}",
                              f"{g.get(f'{stack}.{i}.ff', float('nan')):.3g}"]  # fmt: skip
                table.add_row(f"{stack[:3]} {i + 1}", *cells)
        console.print(table)



def plot_gradients(results: list[dict], output: Path) -> None:
    """Gradient norm of FFN and attention weights against layer index, one line per placement."""
    plt = require_matplotlib()
    panels = [("encoder", "ff"), ("encoder", "self_attn"), ("decoder", "ff"), ("decoder", "self_attn")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (stack, sub) in zip(axes.flat, panels):
        for r in results:
            n = r[f"{stack}_layers"]
            ys = [r["grad_norms"].get(f"{stack}.{i}.{sub}") for i in range(n)]
            ax.plot(range(1, n + 1), ys, marker="o", label=f"{r['norm']} ({n} layers)")
        ax.set(title=f"{stack} {sub}", xlabel="layer", ylabel="gradient norm", yscale="log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    steps = results[0]["steps"]
    fig.suptitle(f"Per-layer gradient norms {'at initialization' if not steps else f'after {steps} updates'}")
    fig.tight_layout()
    save_figure(fig, output)
