"""`mtcli translate --model DIR` on a CTranslate2 export (`mtcli export --to ctranslate2`).

This path never imports torch: the export holds the CTranslate2 model, the SentencePiece file(s)
and `mtcli-ct2.json` (the bundle's resolved config, whose `decode` section gives the defaults that
`--beam`, `--nbest` and `--set decode.KEY=VALUE` override). Input handling, output formats and the
hypothesis dicts (text, tokens, score, logprob) are those of the torch `Translator`.

How mtcli's search settings become CTranslate2's:

- Maximum length a * (src_len + 1) + b tokens before EOS (src_len + 1: the source with its EOS),
  computed per sentence in float32 as mtcli's search does. CTranslate2 takes one
  `max_decoding_length` per call, so sentences are grouped by their maximum length. mtcli forces
  EOS at step max_len; CTranslate2 stops after max_len tokens instead (the same tokens), so the
  hypotheses cut there get that EOS's log-probability from one `score_batch` call afterwards.
  A beam search that reached the maximum length after some hypotheses finished (`maybe_cut`)
  is run again with `patience` 2 (the same beams, every finished hypothesis returned) so that
  mtcli's choice can be made among all of them (`kept_by_mtcli`); only beams that CTranslate2's
  last step did not register are missing. Trained models rarely reach the maximum length.
- `min_len`: `min_decoding_length` (EOS is forbidden before step min_len in both).
- PAD and BOS: mtcli's search sets their log-probabilities to -inf after its softmax. Asking
  CTranslate2 to suppress them masks them before its softmax instead, which renormalizes every
  step (by log(1 - p(PAD) - p(BOS)); ~1e-3 per step for a barely trained model, enough to reorder
  near-equal beams). So sentences are decoded unmasked first, and only those whose hypotheses
  contain PAD or BOS are decoded again with `suppress_sequences` (their log-probabilities then
  carry that renormalization; a trained model practically never needs it).
- Length penalty: mtcli ranks finished hypotheses by GNMT's logprob / ((5 + L) / 6) ** alpha
  (Wu et al. 2016; L counts EOS), CTranslate2 by logprob / L ** penalty, and neither uses it for
  the live beams, so the searches keep the same candidates; what differs is which finished ones
  survive. mtcli keeps the first `beam_size` to finish (by step, then by log-probability) and
  ranks those by GNMT; CTranslate2 keeps the `beam_size` best by its own score of all that
  finished, several at once in a step possibly pushing the count past `beam_size`. We pass
  penalty = -1 (SEARCH_PENALTY): logprob * L, which prefers the earlier-finished (shorter) ones
  as mtcli does (penalty 0 would also let CTranslate2 stop before `beam_size` finished), recover
  each log-probability as score / L, and rank by the exact GNMT score, which is the score
  reported. Measured against the bundles' own beam search on test2016 (2026-12-02): the tiny
  trained model of tests/test_export_ct2.py, beam 4, 300 sentences: 300/300 same best
  translation, 299/300 same 4-best lists; a 20-minute Multi30k en-de model, beam 5, 1,000
  sentences: 998 and 994 (with penalty = alpha instead and no max-length re-run: 986 best).
- Sampling: `sampling_topk` (`top_k`, 0 = the whole vocabulary), `sampling_topp`,
  `sampling_temperature`, `nbest` samples per sentence.
- `--int8` / `--bf16` load the model with compute type int8 / bfloat16; `decode.workers` > 1 is
  CTranslate2's `inter_threads` (batches translated at once), each with cores // workers threads.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.inference.params import SearchParams

INFO_FILE = "mtcli-ct2.json"
EXPORT_MARKER = "mtcli-export.json"
SEARCH_PENALTY = -1.0  # CTranslate2's length penalty: see the module docstring


def is_ct2_export(path: Path) -> bool:
    """Whether `path` is a folder `mtcli export --to ctranslate2` wrote."""
    try:
        marker = json.loads((Path(path) / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("mtcli_export") == "ctranslate2"


@dataclass
class Hyp:
    """A finished translation: target ids (no BOS/EOS), log-probability, GNMT-normalized score."""

    tokens: list[int]
    logprob: float
    score: float


def max_length(n_src: int, p: SearchParams, limit: int) -> int:
    """mtcli's int(a * (n_src + 1) + b) in float32 (see `search.max_lengths`), within [1, limit]."""
    import numpy as np

    value = np.float32(p.max_len_a) * np.float32(n_src + 1) + np.float32(p.max_len_b)
    return max(1, min(int(value), limit))


def gnmt(logprob: float, length: int, alpha: float) -> float:
    """GNMT length normalization, as `search.length_norm`."""
    return logprob / (((5.0 + length) / 6.0) ** alpha)


def kept_by_mtcli(hyps: list[list], k: int) -> list[list]:
    """The `k` finished hypotheses mtcli's search keeps of a sentence that reached its maximum
    length: those that ended with EOS, in the order they finished (by length, then log-probability),
    then the ones its last step forces to EOS, by log-probability with that EOS."""
    natural = sorted((h for h in hyps if h[2]), key=lambda h: (len(h[0]), -h[1]))
    return (natural + sorted((h for h in hyps if not h[2]), key=lambda h: -h[1]))[:k]


class CT2Translator:
    """A CTranslate2 translator with the export's tokenizer and settings: text lines in, hypotheses out."""

    def __init__(self, translator, tok, params: SearchParams, max_tokens: int, max_positions: int,
                 src_prefix: str = ""):  # fmt: skip
        self.translator, self.tok, self.params = translator, tok, params
        self.src_prefix = src_prefix
        self.max_tokens = max_tokens
        self.max_src = max_positions - 2  # room for EOS
        self.limit = max_positions - 1
        self.src_pieces = [tok.src.id_to_piece(i) for i in range(tok.src_vocab_size)]
        self.tgt_pieces = [tok.tgt.id_to_piece(i) for i in range(tok.tgt_vocab_size)]
        self.tgt_ids = {piece: i for i, piece in enumerate(self.tgt_pieces)}

    def encode(self, lines: list[str]) -> list[list[list[int]]]:
        """Source ids of each line in the parts the model reads, as the torch `Translator` cuts a
        line longer than the model's positions (`split_long`)."""
        from mtcli.inference.translator import split_long

        starts = self.tok.src_word_starts()
        return [split_long(seq, self.max_src, starts) for seq in self.tok.encode_src(lines)]

    def translate(self, lines: list[str], first_line: int = 1) -> list[list[dict]]:
        """Hypotheses (dicts: text, tokens, score, logprob) for each line, in input order; a line
        translated in parts gets their hypotheses joined (`join_parts`), as with a bundle."""
        from mtcli.inference.translator import join_parts

        clean = [" ".join(line.split()) for line in lines]
        if self.src_prefix:
            clean = [f"{self.src_prefix} {line}" if line else line for line in clean]
        parts = self.encode(clean)
        owner = [i for i, line_parts in enumerate(parts) for _ in line_parts]  # part -> line
        found = self.search([part for line_parts in parts for part in line_parts])
        texts = iter(self.tok.decode_tgt([h.tokens for hs in found for h in hs]))
        out: list[list[list[dict]]] = [[] for _ in lines]
        for i, hs in zip(owner, found):
            out[i].append([{"text": next(texts), "tokens": len(h.tokens), "score": round(h.score, 4),
                            "logprob": round(h.logprob, 4)} for h in hs])  # fmt: skip
        return [join_parts(p) if len(p) > 1 else (p[0] if p else []) for p in out]

    def search(self, ids: list[list[int]]) -> list[list[Hyp]]:
        """Hypotheses, best first, for non-empty source id lists (without EOS; the model adds it)."""
        p = self.params
        raw = self.decode(ids, suppress=False)
        masked = {i for i, hs in enumerate(raw) if any(p.pad_id in h[0] or p.bos_id in h[0] for h in hs)}
        self.redo(ids, raw, sorted(masked), suppress=True)  # PAD or BOS came out: again, both forbidden
        full = [i for i, hs in enumerate(raw) if self.maybe_cut(ids[i], hs)]
        for suppress in (False, True):
            self.redo(ids, raw, [i for i in full if (i in masked) == suppress], suppress, patience=2)
        self.add_forced_eos(ids, raw)
        for i in full:
            raw[i] = kept_by_mtcli(raw[i], p.beam_size)
        return [sorted((Hyp(t, lp, gnmt(lp, len(t) + 1, p.length_penalty)) for t, lp, _ in hs),
                       key=lambda h: -h.score)[: p.nbest] for hs in raw]  # fmt: skip

    def maybe_cut(self, src: list[int], hyps: list[list]) -> bool:
        """Whether CTranslate2 may have dropped finished hypotheses mtcli keeps: a beam search
        that reached the maximum length (a hypothesis without EOS) with `beam_size` returned, where
        some could have finished before the last step (EOS allowed from step min_len on), so that
        more than `beam_size` finished in all. Those sentences are decoded again, every finished
        hypothesis kept."""
        p = self.params
        if p.beam_size == 1 or p.sampling or len(hyps) < p.beam_size or all(h[2] for h in hyps):
            return False
        return max_length(len(src), p, self.limit) - p.min_len >= 2

    def redo(self, ids: list[list[int]], raw: list, which: list[int], suppress: bool, patience: int = 1) -> None:
        """Decode the sources `which` again with these settings, in place in `raw`."""
        if which:
            for i, hs in zip(which, self.decode([ids[i] for i in which], suppress, patience)):
                raw[i] = hs

    def decode(self, ids: list[list[int]], suppress: bool, patience: int = 1) -> list[list[list]]:
        """CTranslate2's hypotheses of each source, unpacked; one call per maximum length, all queued."""
        groups: dict[int, list[int]] = {}
        for i, seq in enumerate(ids):
            groups.setdefault(max_length(len(seq), self.params, self.limit), []).append(i)
        pending = []
        for length, members in sorted(groups.items()):
            source = [[self.src_pieces[t] for t in ids[i]] for i in members]
            opts = self.options(length, suppress, patience)
            pending.append((members, self.translator.translate_batch(source, asynchronous=True, **opts)))
        raw: list[list[list]] = [[] for _ in ids]
        for members, results in pending:
            for i, res in zip(members, results):
                raw[i] = self.unpack(res.result())
        return raw

    def options(self, length: int, suppress: bool = False, patience: int = 1) -> dict:
        """translate_batch's keyword arguments for sentences whose maximum length is `length`;
        `suppress`: PAD and BOS forbidden; `patience` 2: every finished hypothesis returned."""
        p = self.params
        opts = dict(max_batch_size=self.max_tokens, batch_type="tokens", max_input_length=0,
                    max_decoding_length=length, min_decoding_length=min(p.min_len, length),
                    return_scores=True, return_end_token=True, length_penalty=SEARCH_PENALTY)  # fmt: skip
        if suppress:
            opts["suppress_sequences"] = [[self.tgt_pieces[p.pad_id]], [self.tgt_pieces[p.bos_id]]]
        if p.sampling:
            return {**opts, "beam_size": 1, "num_hypotheses": p.nbest, "sampling_topk": p.top_k,
                    "sampling_topp": p.top_p, "sampling_temperature": p.temperature}  # fmt: skip
        return {**opts, "beam_size": p.beam_size, "patience": patience, "num_hypotheses": p.beam_size * patience}

    def unpack(self, res) -> list[list]:
        """One sentence's hypotheses as [ids without EOS, log-probability, ended with EOS]."""
        lp, out = SEARCH_PENALTY, []
        for pieces, score in zip(res.hypotheses, res.scores):
            ids = [self.tgt_ids[piece] for piece in pieces]
            steps = len(ids)  # CTranslate2's L: the EOS counts when it was produced
            ended = bool(ids) and ids[-1] == self.params.eos_id
            out.append([ids[:-1] if ended else ids, score * steps**lp if steps else score, ended])
        return out

    def add_forced_eos(self, ids: list[list[int]], raw: list[list[list]]) -> None:
        """Hypotheses cut at their maximum length: add the EOS log-probability that mtcli's forced
        last step adds (0 where min_len still forbade EOS there), scored by `score_batch`."""
        cut = [(i, h) for i, hs in enumerate(raw) for h in hs
               if not h[2] and h[0] and len(h[0]) >= self.params.min_len]  # fmt: skip
        if not cut:
            return
        source = [[self.src_pieces[t] for t in ids[i]] for i, _ in cut]
        target = [[self.tgt_pieces[t] for t in h[0]] for _, h in cut]
        scored = self.translator.score_batch(source, target, max_batch_size=self.max_tokens, batch_type="tokens",
                                             max_input_length=0)  # fmt: skip
        for (_, h), res in zip(cut, scored):
            h[1] += res.log_probs[-1]


def _read_info(path: Path) -> dict:
    try:
        return json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MtcliError(f"{path}: not a complete CTranslate2 export ({INFO_FILE}: {exc}); "
                         "export it again with `mtcli export BUNDLE --to ctranslate2 -o DIR`") from None  # fmt: skip


def _decode_config(info: dict, overrides) -> object:
    """The export's decode settings with `--set decode.KEY=VALUE` applied (validated as bundles are)."""
    from mtcli.config import apply_overrides, config_from_dict

    bad = [o for o in overrides if not o.startswith("decode.")]
    if bad:
        raise MtcliError(f"--set {bad[0]}: translate only accepts decode.* keys")
    return config_from_dict(apply_overrides(info["config"], list(overrides)), "--set" if overrides else INFO_FILE)


def compute_type(ctranslate2, device: str, int8: bool, bf16: bool, warn=None) -> str:
    """CTranslate2's compute type for --int8 / --bf16 (a warning and the export's own type where
    the device cannot run it), else "default": the weights as exported."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    wanted = "int8" if int8 else "bfloat16" if bf16 else "default"
    if wanted != "default" and wanted not in ctranslate2.get_supported_compute_types(device):
        warn(f"decode.{'int8' if int8 else 'bf16'}: CTranslate2 cannot compute in {wanted} on {device}; "
             "translating with the exported weights' type")  # fmt: skip
        return "default"
    return wanted


def load_ct2_translator(path: Path, beam=None, nbest=None, overrides=(), device=None, int8=False,
                        bf16=False) -> CT2Translator:  # fmt: skip
    """The CT2Translator of an export folder with its decode settings plus overrides."""
    from mtcli.data.spm import Tokenizer

    path = Path(path)
    info = _read_info(path)
    decode = _decode_config(info, overrides).decode
    int8, bf16 = decode.int8 or int8, decode.bf16 or bf16
    if int8 and bf16:
        raise MtcliError("decode.int8 and decode.bf16 (--int8, --bf16) exclude each other: choose one")
    try:
        import ctranslate2
    except ImportError:
        raise MtcliError("ctranslate2 is not installed: pip install 'mtcli[export]'") from None
    device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    compute = compute_type(ctranslate2, device, int8, bf16)
    workers = decode.workers if decode.workers > 1 else 1
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    try:
        translator = ctranslate2.Translator(str(path), device=device, compute_type=compute,
                                            inter_threads=workers, intra_threads=threads)  # fmt: skip
    except (RuntimeError, ValueError) as exc:
        raise MtcliError(f"{path}: CTranslate2 cannot load this export ({exc})") from None
    tok = Tokenizer(path)
    params = SearchParams.from_decode(decode, tok, beam, nbest)
    return CT2Translator(translator, tok, params, decode.max_tokens, int(info["max_positions"]),
                         getattr(decode, "src_prefix", ""))  # fmt: skip
