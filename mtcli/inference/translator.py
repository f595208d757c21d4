"""The translator: load a bundle, pack input lines into token-budget batches, search them (on
`decode.workers` threads on CPU) and return hypotheses in input order. A line longer than the
model's positions is translated in parts (`split_long`), never truncated. The `translate` command's
input and output handling is in command.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mtcli.errors import MtcliError


class Translator:
    """A model, its tokenizer and search settings: text lines in, hypotheses out."""

    def __init__(self, model, tokenizer, params, max_tokens: int, workers: int, device=None, warn=None,
                 src_prefix: str = ""):  # fmt: skip
        self.model, self.tok, self.params = model, tokenizer, params
        self.src_prefix = src_prefix
        self.max_tokens = max_tokens
        self.workers = workers
        self.device = device or next(model.parameters()).device
        self.max_src = model.max_positions - 2  # room for EOS
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))

    def encode(self, lines: list[str]) -> list[list[list[int]]]:
        """Source ids of each line, as the parts the model reads: one, or for a line longer than the
        model's positions several, cut before a word where one is near the limit (see `split_long`)."""
        starts = self.tok.src_word_starts()
        return [split_long(seq, self.max_src, starts) for seq in self.tok.encode_src(lines)]

    def batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Indices of the non-empty inputs in token-budget batches (source + EOS), longest first so
        that the first batch shows at once whether memory suffices."""
        from mtcli.data.batching import pack

        order = sorted((i for i, s in enumerate(ids) if s), key=lambda i: -len(ids[i]))
        return pack(order, [len(s) + 1 for s in ids], self.max_tokens)

    def prepare(self, lines: list[str]) -> tuple[list[list[int]], list[int]]:
        """The source parts the model translates for `lines` (see `encode`) and the line of each."""
        clean = [" ".join(line.split()) for line in lines]
        if self.src_prefix:
            clean = [f"{self.src_prefix} {line}" if line else line for line in clean]
        parts = self.encode(clean)
        owner = [i for i, line_parts in enumerate(parts) for _ in line_parts]  # part -> line
        return [part for line_parts in parts for part in line_parts], owner

    def finish(self, n_lines: int, owner: list[int], hyps: list[list]) -> list[list[dict]]:
        """Each line's hypotheses (dicts: text, tokens, score, logprob) from the search's hypotheses
        of each part (`prepare`); a line in several parts gets them joined (`join_parts`)."""
        texts = iter(self.tok.decode_tgt([h.tokens for hs in hyps for h in hs]))
        out: list[list[list[dict]]] = [[] for _ in range(n_lines)]
        for i, hs in zip(owner, hyps):
            out[i].append([{"text": next(texts), "tokens": len(h.tokens), "score": round(h.score, 4),
                            "logprob": round(h.logprob, 4)} for h in hs])  # fmt: skip
        return [join_parts(p) if len(p) > 1 else (p[0] if p else []) for p in out]

    def translate(self, lines: list[str], first_line: int = 1) -> list[list[dict]]:
        """Hypotheses (dicts: text, tokens, score, logprob) for each line, in input order."""
        from mtcli.data.batching import pad_batch
        from mtcli.inference.search import beam_search

        ids, owner = self.prepare(lines)
        found: list[list] = [[] for _ in ids]

        def search(batch: list[int]):
            src = pad_batch([ids[i] for i in batch], self.params.pad_id, suffix=self.params.eos_id)
            return beam_search(self.model, src.to(self.device), self.params)

        batches = self.batches(ids)
        # Sampling draws from torch's global generator: keep its order fixed with one worker.
        workers = 1 if self.params.sampling or str(self.device) != "cpu" else self.workers
        for batch, hyps in zip(batches, parallel_map(search, batches, workers)):
            for i, hs in zip(batch, hyps):
                found[i] = hs
        return self.finish(len(lines), owner, found)


def split_long(seq: list[int], limit: int, word_starts: set[int] | None = None) -> list[list[int]]:
    """`seq` in parts of at most `limit` ids (a shorter one whole; empty: no part). Each cut goes
    before the last word-initial piece in the second half of the window, else at the limit."""
    if not seq:
        return []
    parts, start = [], 0
    while len(seq) - start > limit:
        cut = start + limit
        if word_starts:
            for j in range(start + limit, start + limit // 2, -1):
                if seq[j] in word_starts:
                    cut = j
                    break
        parts.append(seq[start:cut])
        start = cut
    return [*parts, seq[start:]]


def join_parts(parts: list[list[dict]]) -> list[dict]:
    """One line's hypotheses from those of its parts: the k-th of each part, joined by a space
    (token counts and log-probabilities add up; the score is the parts' mean)."""
    n = max(len(p) for p in parts)
    joined = []
    for k in range(n):
        picks = [p[min(k, len(p) - 1)] for p in parts if p]
        joined.append({"text": " ".join(h["text"] for h in picks), "tokens": sum(h["tokens"] for h in picks),
                       "score": round(sum(h["score"] for h in picks) / len(picks), 4),
                       "logprob": round(sum(h["logprob"] for h in picks), 4)})  # fmt: skip
    return joined


def parallel_map(fn, items: list, workers: int) -> Iterator:
    """fn over items, in order. With W > 1 workers on CPU, W threads each run whole batches with
    T // W intra-op threads (T = torch's thread count, restored afterwards): a beam-search step is
    many small operations that split poorly across cores, and torch releases the GIL inside them.
    workers 0: 2 when torch has 2 or more threads, else 1."""
    import torch

    total = torch.get_num_threads()
    if workers == 0:
        workers = 2 if total >= 2 else 1
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    per_worker = max(1, total // workers)
    torch.set_num_threads(per_worker)
    try:
        # Each thread sets its own count too: OpenMP and MKL keep it per thread.
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(per_worker,)) as pool:
            yield from pool.map(fn, items)
    finally:
        torch.set_num_threads(total)


def resolve_model_path(model: Path | None) -> Path:
    """--model, else $MTCLI_MODEL, else ./runs/latest."""
    if model is not None:
        return Path(model)
    return Path(os.environ.get("MTCLI_MODEL") or "runs/latest")


def load_translator(model: Path | None, beam=None, nbest=None, overrides=(), device=None, int8=False,
                    bf16=False) -> Translator:  # fmt: skip
    """Load a bundle and build a Translator with its decode settings plus overrides; a CTranslate2
    export (`mtcli export --to ctranslate2`) gets a `CT2Translator`, and torch is never imported."""
    from mtcli.inference.ct2 import is_ct2_export, load_ct2_translator

    if is_ct2_export(resolve_model_path(model)):
        return load_ct2_translator(resolve_model_path(model), beam, nbest, overrides, device, int8, bf16)
    import torch

    from mtcli.config import apply_overrides, config_from_dict
    from mtcli.inference.bundle import load_bundle
    from mtcli.inference.search import SearchParams

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, cfg, tok, _ = load_bundle(resolve_model_path(model), device)
    if overrides:
        bad = [o for o in overrides if not o.startswith("decode.")]
        if bad:
            raise MtcliError(f"--set {bad[0]}: translate only accepts decode.* keys")
        raw = apply_overrides(cfg.model_dump(mode="json"), list(overrides))
        cfg = config_from_dict(raw, "--set")
    decode = cfg.decode.model_copy(update={"int8": cfg.decode.int8 or int8, "bf16": cfg.decode.bf16 or bf16})
    if decode.int8 and decode.bf16:
        raise MtcliError("decode.int8 and decode.bf16 (--int8, --bf16) exclude each other: choose one")
    params = SearchParams.from_decode(decode, tok, beam, nbest)
    net = inference_model(net, device, decode.int8, decode.bf16)
    return Translator(net, tok, params, decode.max_tokens, decode.workers, device, src_prefix=decode.src_prefix)


def inference_model(net, device, int8: bool = False, bf16: bool = False, warn=None):
    """The model as search runs it: fused q/k/v projections; on CPU also --int8 projections, or else
    linears on pre-packed weights ($MTCLI_FAST_LINEAR=0: off), float32 or with --bf16 bfloat16.
    On a GPU, --bf16 runs the whole model in bfloat16 (scores stay float32)."""
    import torch

    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    net = net.fuse_for_inference()
    if str(device) != "cpu":
        if bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return net.to(torch.bfloat16)
        if bf16:
            warn(f"decode.bf16: no bfloat16 support on {device}; translating in float32")
        return net
    if int8:
        from mtcli.inference.fastpaths import quantize_for_inference

        return quantize_for_inference(net)
    from mtcli.inference.fastpaths import bf16_supported, enabled, pack_linears, packed_count

    if bf16 and not (enabled() and bf16_supported()):
        why = "$MTCLI_FAST_LINEAR is off" if not enabled() else "this CPU has no AVX512-BF16 or AMX"
        warn(f"decode.bf16: {why}; translating in float32")
        bf16 = False
    net = pack_linears(net, inplace=True, bf16=bf16)
    if bf16 and not packed_count(net):
        warn("decode.bf16: oneDNN refused the bfloat16 weights; translating in float32")
    return net


def translate_lines(lines: list[str], model: Path | None, beam: int | None = None) -> list[str]:
    """Best translation of each line (used by `mtcli score --model`)."""
    translator = load_translator(model, beam=beam)
    return [h[0]["text"] if h else "" for h in translator.translate(lines)]
