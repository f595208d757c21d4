"""The `mtcli` command line: thin commands that resolve their inputs and call one function each.

Heavy imports (torch, datasets, sacrebleu) happen inside the commands, so `mtcli --help` is instant.
Results go to stdout, logs and progress to stderr. Exit 0 on success, 2 on bad usage/config/input,
1 on other failures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mtcli.errors import MtcliError

app = typer.Typer(
    help="Train, run and score Transformer machine translation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_STATE = {"debug": False}

SetOption = typer.Option(
    None, "--set", "-s", metavar="KEY=VALUE",
    help="Override a config key with a dotted path, e.g. --set model.norm=post (repeatable).",
)  # fmt: skip


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """mtcli: prepare data, train, translate and score neural machine translation models."""
    _STATE["debug"] = debug


def _load(config: Path, overrides: list[str] | None):
    from mtcli.config import load_config

    return load_config(config, overrides or [])


@config_app.command("show")
def config_show(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Print the resolved config (defaults filled in, overrides applied, train.init_from's model) as YAML."""
    from mtcli.config import to_yaml
    from mtcli.finetune import resolve

    sys.stdout.write(to_yaml(resolve(_load(config, overrides))[0]))


@app.command()
def prepare(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] | None = SetOption,
    force: bool = typer.Option(False, "--force", help="Rebuild even if the prepared data is up to date."),
) -> None:
    """Clean, split and tokenize the corpora into the run directory's data/."""
    from mtcli.data.prepare import run_prepare

    run_prepare(_load(config, overrides), force=force)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] | None = SetOption,
    restart: bool = typer.Option(False, "--restart", help="Ignore existing checkpoints and start over."),
) -> None:
    """Train the model (preparing data first if needed), resuming from the last checkpoint."""
    from mtcli.training.run import run_train

    run_train(_load(config, overrides), restart=restart)


@app.command()
def translate(
    text: list[str] | None = typer.Argument(None, help="Sentences to translate (else -i or stdin)."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Model bundle (default: $MTCLI_MODEL, else ./runs/latest)."
    ),
    input: Path | None = typer.Option(None, "--input", "-i", help="Read sentences from FILE."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write translations to FILE."),
    beam: int | None = typer.Option(None, "--beam", "-b", min=1, help="Beam size (1 = greedy)."),
    nbest: int | None = typer.Option(None, "--nbest", "-n", min=1, help="Hypotheses per input."),
    format: str = typer.Option("text", "--format", "-f", help="Output format: text or jsonl."),
    int8: bool = typer.Option(False, "--int8", help="int8-quantize the model for faster CPU search."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 GEMMs (CPUs with AVX512-BF16/AMX, GPUs)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", "-s", metavar="KEY=VALUE", help="Override decode settings, e.g. decode.length_penalty=0.6."
    ),
) -> None:
    """Translate TEXT arguments, a file (-i) or standard input, one line out per line in."""
    from mtcli.inference.command import run_translate

    run_translate(
        text=text or [], model=model, input=input, output=output, beam=beam, nbest=nbest,
        fmt=format, overrides=overrides or [], int8=int8, bf16=bf16,
    )  # fmt: skip


@app.command()
def score(
    files: list[str] | None = typer.Argument(
        None, help="HYP REF [REF ...] ('-' reads stdin, .gz ok); with --model/--src only REF [REF ...]."
    ),
    metric: list[str] | None = typer.Option(
        None, "--metric", "-M", help="bleu, chrf or ter (repeatable; default bleu and chrf)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (scores, signatures)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Translate --src with this model."),
    src: Path | None = typer.Option(None, "--src", help="Source file to translate with --model."),
    tokenize: str | None = typer.Option(None, "--tokenize", "-t", help="BLEU tokenizer (13a, intl, char, none, ...)."),
    lowercase: bool = typer.Option(
        False, "--lowercase", "-lc", help="Case-insensitive BLEU and chrF (TER is, as in sacreBLEU)."
    ),
    chrf_word_order: int = typer.Option(0, "--chrf-word-order", min=0, help="2 gives chrF++."),
    confidence: bool = typer.Option(False, "--confidence", help="Bootstrap 95% confidence intervals."),
    confidence_n: int = typer.Option(1000, "--confidence-n", min=2, help="Bootstrap resamples for --confidence."),
    width: int = typer.Option(2, "--width", "-w", min=0, max=10, help="Decimals printed (sacrebleu CLI: 1)."),
    min_bleu: float | None = typer.Option(None, "--min-bleu", help="Exit 1 if BLEU is below this."),
    min_chrf: float | None = typer.Option(None, "--min-chrf", help="Exit 1 if chrF is below this."),
    max_ter: float | None = typer.Option(None, "--max-ter", help="Exit 1 if TER is above this."),
) -> None:
    """Score hypotheses against references with sacreBLEU (BLEU, chrF, TER)."""
    from mtcli.score import run_score

    failures = run_score(
        files=files or [], metrics=metric or [], json_out=json_out, model=model, src=src,
        tokenize=tokenize, lowercase=lowercase, chrf_word_order=chrf_word_order,
        confidence=confidence, confidence_n=confidence_n, width=width,
        min_bleu=min_bleu, min_chrf=min_chrf, max_ter=max_ter,
    )  # fmt: skip
    if failures:
        typer.echo(f"score gate failed: {'; '.join(failures)}", err=True)
        raise typer.Exit(1)


@app.command()
def compare(
    hyps: list[str] | None = typer.Argument(None, help="BASELINE_HYP HYP [HYP ...] (or use --model/--src)."),
    ref: list[str] | None = typer.Option(None, "--ref", "-r", help="Reference file (repeatable; .gz ok)."),
    model: list[Path] | None = typer.Option(None, "--model", "-m", help="Translate --src with this bundle (repeatable; the first is the baseline)."),
    src: Path | None = typer.Option(None, "--src", help="Source file the --model bundles translate."),
    paired_bs: bool = typer.Option(False, "--paired-bs", help="Paired bootstrap resampling (the default)."),
    paired_ar: bool = typer.Option(False, "--paired-ar", help="Paired approximate randomization."),
    paired_bs_n: int | None = typer.Option(None, "--paired-bs-n", min=1, help="Bootstrap resamples (sacreBLEU: 1000)."),
    paired_ar_n: int | None = typer.Option(None, "--paired-ar-n", min=1, help="Randomization trials (sacreBLEU: 10000)."),
    metric: list[str] | None = typer.Option(None, "--metric", "-M", help="bleu, chrf or ter (repeatable; default bleu and chrf)."),
    tokenize: str | None = typer.Option(None, "--tokenize", "-t", help="BLEU tokenizer (13a, intl, char, none, ...)."),
    lowercase: bool = typer.Option(False, "--lowercase", "-lc", help="Case-insensitive BLEU and chrF."),
    chrf_word_order: int = typer.Option(0, "--chrf-word-order", min=0, help="2 gives chrF++."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object for scripts."),
    width: int = typer.Option(2, "--width", "-w", min=0, max=10, help="Decimals printed."),
) -> None:
    """Paired significance of systems against a baseline (sacreBLEU's paired bootstrap or randomization)."""
    from mtcli.compare import run_compare

    if paired_bs and paired_ar:
        raise MtcliError("--paired-bs and --paired-ar exclude each other")
    test = "ar" if paired_ar else "bs"
    run_compare(
        hyps=hyps or [], refs=ref or [], models=model or [], src=src, test=test,
        n=paired_ar_n if test == "ar" else paired_bs_n, metrics=metric or [], tokenize=tokenize,
        lowercase=lowercase, chrf_word_order=chrf_word_order, json_out=json_out, width=width,
    )  # fmt: skip


@app.command()
def average(
    run_dir: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    last: int = typer.Option(5, "--last", "-k", min=1, help="Average this many newest checkpoints."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Bundle folder (default RUN_DIR/model)."),
) -> None:
    """Average the last K checkpoints of a run into a model bundle (as fairseq and Marian do)."""
    from mtcli.training.checkpoints import average_run

    out, replaced = average_run(run_dir, last, output)
    typer.echo(f"wrote {out}" + (" (replaced the previous bundle there)" if replaced else ""), err=True)


def _int_list(text: str | None, option: str) -> list[int | None]:
    if not text:
        return [None]
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MtcliError(f"{option} {text!r}: expected comma-separated integers, e.g. 6,12") from None


@app.command()
def gradients(
    config: Path = typer.Argument(..., help="Experiment YAML file (its prepared train data is used)."),
    norm: str = typer.Option("post,pre,deepnorm", "--norm", help="Comma-separated placements to compare."),
    layers: str | None = typer.Option(None, "--layers", help="Comma-separated depths (encoder = decoder), e.g. 6,12."),
    batches: int = typer.Option(8, "--batches", min=1, help="Real training batches to average over."),
    steps: int = typer.Option(0, "--steps", min=0, help="Measure after this many updates (0 = at init)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write a PNG plot here."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the raw numbers as JSON here."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Per-layer gradient norms for several norm placements, on real batches (Xiong et al. 2020)."""
    from mtcli.analysis.gradients import run_gradients

    cfg = _load(config, overrides)
    norms = [n.strip() for n in norm.split(",") if n.strip()]
    run_gradients(cfg, norms, _int_list(layers, "--layers"), batches, steps, output, json_path)


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (runs/<name>) to draw side by side."),
    output: Path = typer.Option(Path("curves.png"), "--output", "-o", help="PNG file to write."),
    label: list[str] | None = typer.Option(None, "--label", help="Legend label per run (repeatable)."),
) -> None:
    """Plot training loss, validation loss/BLEU, learning rate and gradient norm of runs."""
    from mtcli.analysis.plot import run_plot

    typer.echo(f"wrote {run_plot(runs, output, label)}", err=True)


@app.command()
def serve(
    model: list[Path] | None = typer.Option(
        None, "--model", "-m", help="Model bundle to serve (repeatable; default: $MTCLI_MODEL, else ./runs/latest)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port."),
    api_key: list[str] | None = typer.Option(None, "--api-key", help="Require this API key (repeatable)."),
    char_limit: int = typer.Option(5000, "--char-limit", min=-1, help="Characters per text (-1: no limit)."),
    batch_limit: int = typer.Option(64, "--batch-limit", min=-1, help="Texts per request (-1: no limit)."),
    queue_size: int = typer.Option(64, "--queue-size", min=1, help="Requests waiting per model before 503."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, help="Seconds per request before 504."),
    max_beam: int = typer.Option(8, "--max-beam", min=1, help="Largest beam (and n-best) a request may ask for."),
    cors: list[str] | None = typer.Option(None, "--cors", metavar="ORIGIN", help="Allow this CORS origin (repeatable)."),
    batching: str = typer.Option(
        "continuous", "--batching", help="continuous: sentences join the running batch between decoding steps; "
        "pooled: waiting requests are translated together in one call; off: one request per call (for comparison)."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", "-s", metavar="KEY=VALUE", help="Override decode settings, e.g. decode.beam_size=4."
    ),
) -> None:
    """Serve models over HTTP: the LibreTranslate API, /v1/translate, /health, /metrics and a page."""
    from mtcli.serve import run_serve

    run_serve(
        model or [], host, port, overrides or [], api_keys=frozenset(api_key or []), char_limit=char_limit,
        batch_limit=batch_limit, queue_size=queue_size, timeout=timeout, max_beam=max_beam,
        cors=tuple(cors or []), batching=batching,
    )  # fmt: skip


@app.command("export")
def export_(
    bundle: Path = typer.Argument(..., help="Model bundle to export (e.g. runs/demo/model)."),
    to: str = typer.Option(..., "--to", help="Target format: ctranslate2 or huggingface."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (a new one, or an earlier export)."),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q",
        help="Weight type: int8, int8_float32, int8_bfloat16, float16 or bfloat16 (default float32).",
    ),
) -> None:
    """Export a bundle to CTranslate2 or Hugging Face Transformers (computes the same function)."""
    from mtcli.export.command import run_export

    typer.echo(f"wrote {run_export(bundle, to, output, quantization)}", err=True)


import_app = typer.Typer(help="Import models trained elsewhere as mtcli bundles.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("huggingface")
def import_huggingface(
    directory: Path = typer.Argument(..., help="Folder saved by MarianMTModel.save_pretrained, with its tokenizer."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write (a new one, or an mtcli bundle)."),
) -> None:
    """Import a Hugging Face Marian (OPUS-MT) model as an mtcli bundle."""
    from mtcli.imports.marian import run_import

    typer.echo(f"wrote {run_import(directory, output)}", err=True)


def main() -> None:
    """Console entry point: run the app and turn MtcliErrors into one `error:` line."""
    try:
        app()
    except MtcliError as exc:
        if _STATE["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
