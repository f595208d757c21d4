"""A child process that runs CTranslate2 exports for tests/test_export_ct2.py, without torch.

Started once per test module (`python tests/ct2_worker.py`); it reads one JSON request per line
on stdin and answers one JSON line on stdout:

    {"op": "score", "model": DIR, "src": [[id, ...]], "tgt": [[id, ...]]}
        -> {"logprobs": [[lp, ...]]}  CTranslate2's score_batch: one per target token, then EOS
    {"op": "search", "model": DIR, "src": [[id, ...]], "beam": K, "overrides": [...]}
        -> {"hyps": [[{"tokens", "logprob", "score"}, ...]]}  mtcli's CT2Translator.search
    {"op": "quit"} -> {"torch_imported": bool}

Source ids come without EOS (the export adds it), targets without BOS/EOS. An exception is
answered as {"error": "..."}.
"""

from __future__ import annotations

import json
import sys
import traceback


def translator(cache: dict, model: str, beam: int = 1, overrides: tuple = ()):
    """The CT2Translator of an export (kept: loading a model per request would dominate)."""
    from mtcli.inference.ct2 import load_ct2_translator

    key = (model, beam, overrides)
    if key not in cache:
        if len(cache) > 8:
            cache.clear()
        cache[key] = load_ct2_translator(model, beam=beam, nbest=beam, overrides=list(overrides), device="cpu")
    return cache[key]


def score(cache: dict, req: dict) -> dict:
    tr = translator(cache, req["model"])
    src = [[tr.src_pieces[t] for t in seq] for seq in req["src"]]
    tgt = [[tr.tgt_pieces[t] for t in seq] for seq in req["tgt"]]
    results = tr.translator.score_batch(src, tgt, max_input_length=0)
    return {"logprobs": [list(r.log_probs) for r in results]}


def search(cache: dict, req: dict) -> dict:
    tr = translator(cache, req["model"], req.get("beam", 1), tuple(req.get("overrides", ())))
    found = tr.search(req["src"])
    return {"hyps": [[{"tokens": h.tokens, "logprob": h.logprob, "score": h.score} for h in hs] for hs in found]}


def main() -> None:
    cache: dict = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            print(json.dumps({"torch_imported": "torch" in sys.modules}), flush=True)
            return
        try:
            answer = {"score": score, "search": search}[req["op"]](cache, req)
        except Exception as exc:  # the test shows it
            answer = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
