"""translate_bench's CTranslate2 rows through `mtcli translate`: the very model of the mtcli rows,
exported with `mtcli export --to ctranslate2` (float32 and int8) and translated by
`mtcli.inference.ct2` (what `mtcli translate --model EXPORT` runs), in a child process that never
imports torch, on the same work.

Same work: the 1,000 test2016 sentences, beam 5, 30 decoder steps per hypothesis. mtcli's search
takes 29 tokens plus its forced-EOS step; CTranslate2 has no forced step, so these rows run with
max_len_b = 30 and min_len = 31 (EOS forbidden throughout: 30 tokens, 30 steps, and no forced EOS
to score afterwards). Batching is the export translator's own: sentences grouped by maximum length
(all one group here) and cut into token budgets of `decode.max_tokens` (the budget the mtcli
budget rows found fastest), so these rows stand beside the "mtcli budget" rows.

Nothing here imports torch at import time; `export_worker` runs in the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import D_MODEL, FFN, HEADS, LAYERS, PAD, REPO, VOCAB
from translate_setup import BEAM, RUN_DIR, STEPS, check_steps, log_system, median_run

from mtcli.files import write_text

ENTRY = Path(__file__).with_name("translate_bench.py")  # its --ct2-export-worker flag runs export_worker
EXPORT_ROWS = (("ct2 export fp32 (mtcli translate)", None), ("ct2 export int8 (mtcli translate)", "int8"))
FORCED = ["decode.max_len_a=0", f"decode.max_len_b={STEPS}", f"decode.min_len={STEPS + 1}", "decode.workers=1"]


def export_worker(export: str, lines_file: str, out_file: str, budget: str) -> None:
    """Child process: time `CT2Translator.translate` on the lines (torch never imported)."""
    from mtcli.inference.ct2 import load_ct2_translator

    lines = json.loads(Path(lines_file).read_text())
    tr = load_ct2_translator(export, beam=BEAM, overrides=[*FORCED, f"decode.max_tokens={budget}"], device="cpu")
    steps: set[int] = set()

    def one_pass():
        for hyps in tr.translate(lines):
            steps.add(hyps[0]["tokens"])  # 30 tokens, no EOS: 30 decoder steps

    tr.translate(lines[:32])  # warm-up
    result = median_run(one_pass, len(lines))
    result["steps"] = check_steps(f"ctranslate2 export {export}", steps)
    result["torch_imported"] = "torch" in sys.modules
    result["compute_type"] = tr.translator.compute_type
    result["max_tokens"] = int(budget)
    write_text(Path(out_file), json.dumps(result))


def write_bundle(model, folder: Path) -> Path:
    """The same-work mtcli model as a bundle (configs/base.yaml's data, the model's own shape)."""
    from mtcli import __version__
    from mtcli.config import ModelConfig, config_from_dict, load_config
    from mtcli.data.manifest import SPECIAL, Vocab
    from mtcli.inference.bundle import export_bundle
    from mtcli.model.transformer import build_model, spec_digest

    raw = load_config(REPO / "configs" / "base.yaml", [f"run_dir={RUN_DIR}"]).model_dump(mode="json")
    # The shape of translate_setup.mtcli_model; checked against the weights just below.
    raw["model"] = ModelConfig(d_model=D_MODEL, n_heads=HEADS, d_ff=FFN, encoder_layers=LAYERS,
                               decoder_layers=LAYERS, dropout=0.0, norm="post").model_dump(mode="json")  # fmt: skip
    cfg = config_from_dict(raw, "translate_exports")
    vocab = Vocab(VOCAB, VOCAB, joint=True, pad_id=PAD)
    twin = build_model(cfg.model, vocab)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    meta = {**vocab.saved(), **SPECIAL, "mtcli": __version__, "src_lang": "en", "tgt_lang": "de"}
    export_bundle(model, raw, REPO / RUN_DIR / "data", folder, meta, spec_digest(cfg.model, vocab))
    return folder


def bench_exports(systems: dict, model, lines: list[str], budget: int) -> None:
    """The CTranslate2-through-mtcli-translate rows into `systems`."""
    from mtcli.export.command import run_export

    with tempfile.TemporaryDirectory(prefix="mtcli-ct2-export-") as tmp:
        work = Path(tmp)
        bundle = write_bundle(model, work / "bundle")
        lines_file = work / "lines.json"
        write_text(lines_file, json.dumps(lines))
        for name, quant in EXPORT_ROWS:
            folder = run_export(bundle, "ctranslate2", work / (quant or "fp32"), quant)
            out = work / f"{quant or 'fp32'}.result.json"
            cmd = [sys.executable, str(ENTRY), "--ct2-export-worker", str(folder), str(lines_file), str(out),
                   str(budget)]  # fmt: skip
            subprocess.run(cmd, check=True)
            systems[name] = json.loads(out.read_text())
            if systems[name]["torch_imported"]:
                raise SystemExit(f"{name}: the CTranslate2 child imported torch")
            log_system(name, systems[name])
