"""translate_bench's peers on the same work: Hugging Face `MarianMTModel.generate` and CTranslate2
(fp32 and int8, converted from that Marian model, timed in a child process that never imports torch).

Nothing here imports torch at import time: `ct2_worker` runs in that child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BOS, EOS, PAD, THREADS, UNK, marian_model
from translate_setup import BATCH, BEAM, STEPS, check_steps, log_system, median_run

from mtcli.files import write_text

ENTRY = Path(__file__).with_name("translate_bench.py")  # its --ct2-worker flag runs ct2_worker
CT2_SYSTEMS = (("ct2 fp32", "float32"), ("ct2 int8", "int8"))


# ----------------------------------------------------------------------------- Hugging Face


def hf_model():
    """The Marian peer without dropout, in eval mode; no forced last token."""
    # forced_eos_token_id: Marian's default (0) would force PAD as the last token
    model = marian_model(0.0, forced_eos_token_id=None).eval()
    model.generation_config.forced_eos_token_id = None
    return model


def bench_hf(model, batches, n: int) -> dict:
    import torch

    kw = dict(num_beams=BEAM, min_new_tokens=STEPS, max_new_tokens=STEPS, early_stopping=False,
              do_sample=False, num_return_sequences=1)  # fmt: skip
    steps: set[int] = set()

    def run(src):
        out = model.generate(input_ids=src, attention_mask=src.ne(PAD).long(), **kw)
        steps.add(out.size(1) - 1)  # minus the decoder start token
        return out

    def one_pass():
        for src in batches:
            run(src)

    with torch.inference_mode():
        first = run(batches[0])  # warm-up
        result = median_run(one_pass, n)
    result["steps"] = check_steps("hf generate", steps)
    result["first_batch_ids"] = first[:, 1:].tolist()
    return result


# ----------------------------------------------------------------------------- CTranslate2


def ct2_worker(model_dir: str, tokens_file: str, out_file: str, inter: str = "1") -> None:
    """Child process: time a converted model on the given token batches (torch never imported).
    With inter > 1, `inter` workers of THREADS // inter threads each take whole batches at once."""
    import ctranslate2

    batches = json.loads(Path(tokens_file).read_text())
    n = sum(len(b) for b in batches)
    inter_threads = int(inter)
    translator = ctranslate2.Translator(model_dir, device="cpu", inter_threads=inter_threads,
                                        intra_threads=max(1, THREADS // inter_threads))  # fmt: skip
    opts = dict(
        beam_size=BEAM, max_batch_size=BATCH, min_decoding_length=STEPS,
        max_decoding_length=STEPS, return_end_token=True, length_penalty=1.0,
    )  # fmt: skip
    steps: set[int] = set()

    def one_pass():
        if inter_threads > 1:  # all batches queued at once, results collected in order
            pending = [translator.translate_batch(batch, asynchronous=True, **opts) for batch in batches]
            results = [r.result() for batch in pending for r in batch]
        else:
            results = [r for batch in batches for r in translator.translate_batch(batch, **opts)]
        for res in results:
            # With return_end_token the hypothesis lists every token the decoder produced
            # (EOS included when it was produced), i.e. one token per decoder step.
            steps.add(len(res.hypotheses[0]))

    warm = translator.translate_batch(batches[0], **opts)  # warm-up
    result = median_run(one_pass, n)
    result["first_batch"] = [r.hypotheses[0] for r in warm]
    result["steps"] = check_steps(f"ctranslate2 {model_dir}", steps)
    result["torch_imported"] = "torch" in sys.modules
    result["compute_type"] = translator.compute_type
    write_text(Path(out_file), json.dumps(result))


def convert_ct2(hf_model, pieces: list[str], out_dir: Path, quantization: str) -> None:
    """Save the HF Marian model and convert it to CTranslate2 with our own vocabulary.

    CTranslate2's Marian loader assumes the OPUS layout (pad is the last vocabulary entry and the
    decoder starts from a zero embedding); our model has pad 0 and starts from BOS 2 like
    mtcli, so the loader is adapted: keep every row, start from <s>, take tokens from the spm.
    """
    from ctranslate2.converters.transformers import (
        BartLoader,
        MarianMTLoader,
        TransformersConverter,
    )
    from transformers import MarianMTModel

    class Vocab:  # the few tokenizer attributes the loader reads
        bos_token, eos_token, unk_token = pieces[BOS], pieces[EOS], pieces[UNK]

        def convert_ids_to_tokens(self, i):
            return pieces[i]

    class Loader(MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)  # no pad-row removal

        def set_config(self, config, model, tokenizer):
            BartLoader.set_config(self, config, model, tokenizer)  # decoder starts from <s>

        def set_decoder(self, spec, decoder):
            BartLoader.set_decoder(self, spec, decoder)  # real BOS embedding, not zeros

        def get_vocabulary(self, model, tokenizer):
            return list(pieces)

    class Converter(TransformersConverter):
        def _load(self):
            model = MarianMTModel.from_pretrained(self._model_name_or_path)
            return Loader()(model, Vocab())

    hf_dir = out_dir.parent / "hf"
    if not hf_dir.exists():
        hf_model.save_pretrained(hf_dir)
    Converter(str(hf_dir)).convert(str(out_dir), quantization=quantization, force=True)


def run_ct2(model_dir: Path, token_batches: list[list[list[str]]], work: Path, inter: int = 1) -> dict:
    tokens_file, out_file = work / "tokens.json", work / f"{model_dir.name}.{inter}.result.json"
    write_text(tokens_file, json.dumps(token_batches))
    cmd = [sys.executable, str(ENTRY), "--ct2-worker", str(model_dir), str(tokens_file), str(out_file), str(inter)]
    subprocess.run(cmd, check=True)
    return json.loads(out_file.read_text())


def bench_ct2(systems: dict, hf, pieces: list[str], ids: list[list[int]], workers: int) -> None:
    """CTranslate2 fp32 and int8 rows (and with `workers` inter_threads) into `systems`."""
    n = len(ids)
    token_batches = [[[pieces[t] for t in seq] for seq in ids[i : i + BATCH]] for i in range(0, n, BATCH)]
    with tempfile.TemporaryDirectory(prefix="mtcli-ct2-") as tmp:
        work = Path(tmp)
        for name, quant in CT2_SYSTEMS:
            convert_ct2(hf, pieces, work / name.replace(" ", "-"), quant)
        for name, _ in CT2_SYSTEMS:
            systems[name] = run_ct2(work / name.replace(" ", "-"), token_batches, work)
            log_system(name, systems[name])
            if workers > 1:
                inter = f"{name} {workers} workers"
                systems[inter] = run_ct2(work / name.replace(" ", "-"), token_batches, work, workers)
                systems[inter].pop("first_batch")
                log_system(inter, systems[inter])


def compare_first_batch(systems: dict, pieces: list[str]) -> None:
    """The converted model must be the same model: CT2's first-batch tokens against HF generate's."""
    hf_first = [[pieces[t] for t in row] for row in systems["hf generate"].pop("first_batch_ids")]
    for name, _ in CT2_SYSTEMS:
        same = sum(a == b for a, b in zip(hf_first, systems[name].pop("first_batch")))
        systems[name]["same_output_as_hf_first_batch"] = f"{same}/{len(hf_first)}"
        print(f"{name}: same tokens as HF generate on {same}/{len(hf_first)} sentences of batch 1")


def bench_peers(systems: dict, batches, pieces: list[str], ids: list[list[int]], skip: set[str], workers: int) -> None:
    """The HF generate and CTranslate2 rows (unless in `skip`) into `systems`, in that order."""
    hf = hf_model()
    if "hf" not in skip:
        systems["hf generate"] = bench_hf(hf, batches, len(ids))
        log_system("hf generate", systems["hf generate"])
    if "ct2" not in skip:
        bench_ct2(systems, hf, pieces, ids, workers)
        if "hf generate" in systems:
            compare_first_batch(systems, pieces)
