"""Translate a file with a Hugging Face export (`mtcli export --to huggingface`), as a user would:
`AutoTokenizer` + `AutoModelForSeq2SeqLM.generate`. A child of bench/export_bench.py.

    .venv/bin/python bench/hf_generate.py EXPORT_DIR SRC_FILE BEAM > hyps.txt

Batches of 32 length-sorted sentences. mtcli's maximum length a * src_len + b becomes each batch's
`max_new_tokens` (from its longest source); its GNMT length penalty is passed as Transformers'
`length_penalty`, which divides by length**penalty instead (see README: mtcli export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BATCH = 32


def main() -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    export, src, beam = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    decode = json.loads((export / "mtcli-export.json").read_text())["decode"]
    tok = AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(export)).eval()
    lines = src.read_text(encoding="utf-8").split("\n")[:-1]
    ids = [tok(line).input_ids for line in lines]
    order = sorted(range(len(lines)), key=lambda i: -len(ids[i]))
    out = [""] * len(lines)
    for start in range(0, len(order), BATCH):
        batch = order[start : start + BATCH]
        enc = tok([lines[i] for i in batch], return_tensors="pt", padding=True)
        longest = max(len(ids[i]) - 1 for i in batch)
        extra = {"length_penalty": decode["length_penalty"], "early_stopping": True} if beam > 1 else {}
        with torch.no_grad():
            gen = model.generate(**enc, num_beams=beam, do_sample=False, min_new_tokens=decode["min_len"],
                                 max_new_tokens=int(decode["max_len_a"] * longest + decode["max_len_b"]) + 1,
                                 **extra)  # fmt: skip
        for i, text in zip(batch, tok.batch_decode(gen, skip_special_tokens=True)):
            out[i] = text
    sys.stdout.write("".join(f"{t}\n" for t in out))


if __name__ == "__main__":
    main()
