"""translate_bench part 2: real throughput of a trained mtcli bundle on test2016 with its own decode
settings at beam 5 and real output lengths (batches of 64, its token budgets, without the fast
path, with workers, int8 and bf16), how many translations each variant leaves identical, and with
references the sacreBLEU of each.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from translate_setup import BEAM, median_run

ONE_WORKER = ["decode.int8=false", "decode.bf16=false", "decode.workers=1"]


def identical(texts: dict[str, list[str]], a: str, b: str, n: int) -> str:
    """How many of the `n` translations of variant `b` equal those of `a`, as "same/n"."""
    same = sum(x == y for x, y in zip(texts[a], texts[b]))
    return f"{same}/{n}"


def time_budget(translator, lines: list[str], texts: dict[str, list[str]], name: str) -> dict:
    """Median sentences/s of `translator.translate` (its token-budget batching); the last pass's
    translations go to texts[name]."""

    def one_pass():
        texts[name] = [h[0]["text"] if h else "" for h in translator.translate(lines)]

    translator.translate(lines[:64])  # warm-up
    return median_run(one_pass, len(lines))


def time_batch64(tr, lines: list[str]) -> tuple[dict, list[int]]:
    """Median sentences/s of beam search over batches of 64 in input order, and the output lengths."""
    from mtcli.data.batching import pad_batch
    from mtcli.inference.search import beam_search

    ids = [part for parts in tr.encode([" ".join(line.split()) for line in lines]) for part in parts]
    pad, eos = tr.params.pad_id, tr.params.eos_id
    batches = [pad_batch(ids[i : i + 64], pad, suffix=eos) for i in range(0, len(ids), 64)]
    out_lens: list[int] = []

    def batch64():
        out_lens.clear()
        for src in batches:
            out_lens.extend(len(h[0].tokens) for h in beam_search(tr.model, src, tr.params))

    beam_search(tr.model, batches[0], tr.params)  # warm-up
    return median_run(batch64, len(lines)), out_lens


def load_fp32(model_path: Path):
    """The bundle as `mtcli translate` loads it on CPU, and the same without the fast path."""
    from mtcli.inference.fastpaths import ENV
    from mtcli.inference.translator import load_translator

    tr = load_translator(model_path, beam=BEAM, device="cpu", overrides=ONE_WORKER)
    os.environ[ENV] = "0"
    try:
        plain = load_translator(model_path, beam=BEAM, device="cpu", overrides=ONE_WORKER)
    finally:
        del os.environ[ENV]
    return tr, plain


def reduced_precision(result: dict, model_path: Path, lines: list[str], texts: dict, workers: int,
                      wanted: dict[str, bool]) -> None:  # fmt: skip
    """int8 and bf16 under token budgets (those `wanted`), their identical translations, and bf16
    with workers, into `result`."""
    from mtcli.inference.translator import load_translator

    for name in ("int8", "bf16"):
        if not wanted[name]:
            continue
        q = load_translator(model_path, beam=BEAM, device="cpu", overrides=["decode.workers=1"], **{name: True})
        result[f"{name}_budget"] = time_budget(q, lines, texts, name)
        result[f"{name}_identical_translations"] = identical(texts, "fp32", name, len(lines))
        if workers > 1 and name == "bf16":
            par = load_translator(model_path, beam=BEAM, device="cpu", bf16=True,
                                  overrides=[f"decode.workers={workers}"])  # fmt: skip
            result["bf16_budget_workers"] = time_budget(par, lines, texts, "bf16 workers")


def bench_real(model_path: Path, lines: list[str], with_int8: bool = True, workers: int = 2,
               with_bf16: bool = True, refs: list[str] | None = None) -> dict:  # fmt: skip
    """Sentences/s of a trained bundle at beam 5 with its own decode settings and real lengths.

    Batches of 64 sentences in input order, and its own token-budget batching (decode.max_tokens),
    both as `mtcli translate` loads the model (CPU fast path), and token budgets without the fast
    path; with `mtcli.inference.fastpaths` also the int8 model (`--int8`) under token-budget batching and how
    many of its translations are identical to the float32 ones, likewise bfloat16 linears
    (`--bf16`, where the CPU has them); with workers > 1 also token budgets searched by that many
    workers (decode.workers). With `refs`, the sacreBLEU of each variant's translations.
    """
    from mtcli.inference.fastpaths import bf16_supported
    from mtcli.inference.translator import load_translator

    tr, plain = load_fp32(model_path)
    texts: dict[str, list[str]] = {}
    result = {"max_tokens": tr.max_tokens}
    result["batch64"], out_lens = time_batch64(tr, lines)
    result["budget"] = time_budget(tr, lines, texts, "fp32")
    result["budget_no_fast_path"] = time_budget(plain, lines, texts, "fp32 no fast path")
    result["fast_path_identical_translations"] = identical(texts, "fp32", "fp32 no fast path", len(lines))
    if workers > 1:
        par = load_translator(model_path, beam=BEAM, device="cpu",
                              overrides=[*ONE_WORKER[:2], f"decode.workers={workers}"])  # fmt: skip
        result["workers"] = workers
        result["budget_workers"] = time_budget(par, lines, texts, "fp32 workers")
        result["workers_identical_translations"] = identical(texts, "fp32", "fp32 workers", len(lines))
    wanted = {"int8": with_int8, "bf16": with_bf16 and bf16_supported()}
    reduced_precision(result, model_path, lines, texts, workers, wanted)
    if refs is not None:
        import sacrebleu

        refs = refs[: len(lines)]  # --limit
        result["bleu"] = {k: round(sacrebleu.corpus_bleu(v, [refs]).score, 2) for k, v in texts.items()}
    result["mean_output_tokens"] = sum(out_lens) / len(out_lens)
    keys = ("beam_size", "length_penalty", "max_len_a", "max_len_b", "min_len")
    result["decode"] = {k: getattr(tr.params, k) for k in keys}
    return result


def print_real(real: dict, model_path: Path) -> None:
    print(f"\nreal throughput ({model_path}, beam {BEAM}, mean output {real['mean_output_tokens']:.1f} tokens):")
    print(f"  batches of 64             {real['batch64']['median']:7.1f} sent/s")
    print(f"  token budget {real['max_tokens']:<6}       {real['budget']['median']:7.1f} sent/s")
    print(f"  same, no fast path        {real['budget_no_fast_path']['median']:7.1f} sent/s "
          f"(identical translations {real['fast_path_identical_translations']})")  # fmt: skip
    if "budget_workers" in real:
        print(f"  same, {real['workers']} workers         {real['budget_workers']['median']:7.1f} sent/s "
              f"(identical translations {real['workers_identical_translations']})")  # fmt: skip
    for name in ("int8", "bf16"):
        if f"{name}_budget" in real:
            print(f"  {name}, token budget {real['max_tokens']:<6} {real[f'{name}_budget']['median']:7.1f} sent/s "
                  f"(identical translations {real[f'{name}_identical_translations']})")  # fmt: skip
    if "bf16_budget_workers" in real:
        print(f"  bf16, {real['workers']} workers         {real['bf16_budget_workers']['median']:7.1f} sent/s")
    if "bleu" in real:
        print(f"  sacreBLEU against --ref: {real['bleu']}")


def real_part(model_path: Path, lines: list[str], with_int8: bool, workers: int = 2, with_bf16: bool = True,
              refs: list[str] | None = None) -> dict:  # fmt: skip
    real = bench_real(model_path, lines, with_int8, workers, with_bf16, refs)
    print_real(real, model_path)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"model": str(model_path), "date": date, "load_average": os.getloadavg(), **real}
