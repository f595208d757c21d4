"""Translate a file with a Hugging Face export (`mtcli export --to huggingface`), as a user would:
`AutoTokenizer` + `AutoModelForSeq2SeqLM.generate`. A child of bench/export_bench.py.

    .venv/bin/python bench/hf_generate.py EXPORT_DIR SRC_FILE BEAM > hyps.txt

Batches of up to 32 sentences that share mtcli's maximum length int(a * (src_len + 1) + b) (the
source with its EOS, in float32 as mtcli computes it), which becomes their `max_new_tokens`; a
weak model that never emits EOS then stops where mtcli stops. mtcli's GNMT length penalty is passed as Transformers'
`length_penalty`, which divides by length**penalty instead (see README: mtcli export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BATCH = 32


def main() -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    export, src, beam = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    decode = json.loads((export / "mtcli-export.json").read_text())["decode"]
    tok = AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(export)).eval()
    lines = src.read_text(encoding="utf-8").split("\n")[:-1]
    ids = [tok(line).input_ids for line in lines]
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        n = len(seq)  # the pieces and EOS
        limit = int(np.float32(decode["max_len_a"]) * np.float32(n) + np.float32(decode["max_len_b"]))
        groups.setdefault(max(1, limit), []).append(i)
    out = [""] * len(lines)
    extra = {"length_penalty": decode["length_penalty"], "early_stopping": True} if beam > 1 else {}
    for limit, members in sorted(groups.items()):
        for start in range(0, len(members), BATCH):
            batch = members[start : start + BATCH]
            enc = tok([lines[i] for i in batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                gen = model.generate(**enc, num_beams=beam, do_sample=False, min_new_tokens=decode["min_len"],
                                     max_new_tokens=limit, **extra)  # fmt: skip
            for i, text in zip(batch, tok.batch_decode(gen, skip_special_tokens=True)):
                out[i] = text
    sys.stdout.write("".join(f"{t}\n" for t in out))


if __name__ == "__main__":
    main()
