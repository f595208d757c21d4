"""`mtcli export --to ctranslate2` computes what mtcli computes (issue 23).

Every placement x norm x tying x vocabulary that CTranslate2 can represent, as real bundles of
random-initialised tiny models with real SentencePiece models, plus one tiny trained model:
CTranslate2's per-token log-probabilities (`score_batch`) within 1e-4 of mtcli's teacher-forced
ones, and greedy outputs identical on >= 99.5% of sentences, every divergence at a near-tie.
CTranslate2 runs in one child process per module (tests/ct2_worker.py) that never imports torch.
"""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from run_helpers import DATA, REPO, TINY, cli

pytest.importorskip("ctranslate2")

from mtcli.config import ModelConfig, load_config  # noqa: E402
from mtcli.errors import MtcliError  # noqa: E402

TOL = 1e-4  # per-token log-probability
N_SENT = 200
GAIN, QK_GAIN, EOS_SCALE = 2.5, 1.6, 2.5  # random init scaled so that greedy outputs vary (and some end in EOS)
SCALED = ("v_proj.weight", "out_proj.weight", "linear1.weight", "linear2.weight")
HAS_OUTPUT_BIAS = "output_bias" in ModelConfig.model_fields
HAS_SILU = "silu" in str(ModelConfig.model_fields["activation"].annotation)


def read(name: str, n: int) -> list[str]:
    with gzip.open(DATA / "multi30k" / name, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in itertools.islice(f, n)]


def cases() -> list[dict]:
    """Every placement x norm x tying x joint/separate vocabulary; the other keys rotate over them."""
    acts = ["relu", "gelu", "silu" if HAS_SILU else "relu"]
    out = []
    for i, (norm, norm_type, tie, joint) in enumerate(
        itertools.product(["post", "pre", "deepnorm"], ["layernorm", "rmsnorm"], [True, False], [True, False])
    ):
        case = {"norm": norm, "norm_type": norm_type, "tie_embeddings": tie, "joint": joint,
                "activation": acts[i % 3], "positions": ["sinusoidal", "learned"][i // 3 % 2],
                "layers": 1 + i % 2, "norm_eps": [1e-5, 1e-6][i // 2 % 2]}  # fmt: skip
        if HAS_OUTPUT_BIAS:
            case["output_bias"] = i % 4 == 1
        out.append(case)
    return out


def case_id(c: dict) -> str:
    return "-".join([c["norm"], c["norm_type"], "tied" if c["tie_embeddings"] else "untied",
                     "joint" if c["joint"] else "separate", c["activation"], c["positions"][:5],
                     f"L{c['layers']}", *(["bias"] if c.get("output_bias") else [])])  # fmt: skip


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory, data_dir) -> dict[bool, Path]:
    """{joint: folder}: one joint SentencePiece model, and separate source/target ones."""
    from mtcli.config import TokenizerConfig
    from mtcli.data.spm import train_spm

    root = tmp_path_factory.mktemp("spm")
    en, de = read("train.en.gz", 3000), read("train.de.gz", 3000)
    (root / "joint").mkdir()
    (root / "separate").mkdir()
    train_spm(en + de, root / "joint" / "spm", TokenizerConfig(vocab_size=400), 1, 1000)
    train_spm(en, root / "separate" / "spm.src", TokenizerConfig(vocab_size=300), 1, 1000)
    train_spm(de, root / "separate" / "spm.tgt", TokenizerConfig(vocab_size=350), 1, 1000)
    return {True: root / "joint", False: root / "separate"}


@pytest.fixture(scope="module")
def pairs(data_dir) -> tuple[list[str], list[str]]:
    return read("val.en.gz", N_SENT), read("val.de.gz", N_SENT)


class Worker:
    """The CTranslate2 child process: one JSON request and answer per line."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "ct2_worker.py")], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    assert w.ask(op="quit") == {"torch_imported": False}
    w.proc.wait(timeout=60)


def build_bundle(path: Path, spm_dir: Path, case: dict, seed: int = 0, boost: dict | None = None) -> Path:
    """A real bundle of a random model described by `case`, its init scaled to vary outputs."""
    from mtcli.data.manifest import SPECIAL, Vocab
    from mtcli.data.spm import Tokenizer
    from mtcli.inference.bundle import export_bundle
    from mtcli.model.transformer import build_model, spec_digest

    keys = {k: v for k, v in case.items() if k not in ("joint", "layers")}
    sets = [f"model.{k}={v}" for k, v in keys.items()] + [
        f"model.encoder_layers={case['layers']}", f"model.decoder_layers={case['layers']}", "model.dropout=0",
        "model.max_positions=128", "data.filters.max_tokens=100", f"tokenizer.joint={case['joint']}",
        "decode.max_len_a=0.6", "decode.max_len_b=5"]  # fmt: skip
    cfg = load_config(TINY, sets)
    tok = Tokenizer(spm_dir)
    vocab = Vocab(tok.src_vocab_size, tok.tgt_vocab_size, case["joint"], SPECIAL["pad_id"])
    torch.manual_seed(seed)
    model = build_model(cfg.model, vocab).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm." in name or name.startswith(("encoder_norm", "decoder_norm")):
                p.copy_(float(name.endswith("weight")) + 0.2 * torch.randn_like(p))  # norm gains ~1
            elif p.dim() == 2 and name.endswith(SCALED):
                p.mul_(GAIN)
            elif p.dim() == 2 and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(QK_GAIN)
        out = model.tgt_embed.tokens.weight if model.output_proj is None else model.output_proj.weight
        out[SPECIAL["eos_id"]].mul_(EOS_SCALE)
        for token, scale in (boost or {}).items():  # {id: factor} on the output rows
            out[token].mul_(scale)
    meta = {**vocab.saved(), **SPECIAL, "mtcli": "test", "src_lang": "en", "tgt_lang": "de"}
    export_bundle(model, cfg.model_dump(mode="json"), spm_dir, path, meta, spec_digest(cfg.model, vocab))
    return path


# ----------------------------------------------------------------------------- the comparison


def mtcli_side(bundle: Path, src_lines: list[str], tgt_lines: list[str]) -> dict:
    """mtcli's teacher-forced log-probabilities and greedy outputs (the model as bundles load)."""
    from mtcli.data.batching import pad_batch
    from mtcli.inference.bundle import load_bundle
    from mtcli.inference.search import SearchParams, beam_search

    model, cfg, tok, _ = load_bundle(bundle)
    src, tgt = tok.encode_src(src_lines), tok.tgt.encode(tgt_lines)
    s = pad_batch(src, tok.pad_id, suffix=tok.eos_id)
    with torch.no_grad():
        lp = torch.log_softmax(model(s, pad_batch([[tok.bos_id, *t] for t in tgt], tok.pad_id)).float(), -1)
    scores = [[float(lp[i, j, t]) for j, t in enumerate([*seq, tok.eos_id])] for i, seq in enumerate(tgt)]
    params = SearchParams.from_decode(cfg.decode, tok, 1, 1)
    greedy = [hs[0].tokens for hs in beam_search(model, s, params)]
    return {"model": model, "params": params, "src": src, "tgt": tgt, "scores": scores, "greedy": greedy}


def top_two_gap(ref: dict, i: int, prefix: list[int]) -> float:
    """mtcli's gap between its two best next tokens after `prefix` (search's masking rules)."""
    p = ref["params"]
    src = torch.tensor([[*ref["src"][i], p.eos_id]])
    with torch.no_grad():
        lp = torch.log_softmax(ref["model"](src, torch.tensor([[p.bos_id, *prefix]]))[0, -1].float(), -1)
    lp[[p.pad_id, p.bos_id]] = float("-inf")
    if len(prefix) < p.min_len:
        lp[p.eos_id] = float("-inf")
    top = lp.topk(2).values
    return float(top[0] - top[1])


def compare(worker: Worker, export: Path, ref: dict) -> dict:
    """How CTranslate2 on `export` agrees with mtcli's reference."""
    scores = worker.ask(op="score", model=str(export), src=ref["src"], tgt=ref["tgt"])["logprobs"]
    assert [len(x) for x in scores] == [len(x) for x in ref["scores"]]
    max_diff = max(abs(a - b) for x, y in zip(scores, ref["scores"]) for a, b in zip(x, y))
    hyps = worker.ask(op="search", model=str(export), src=ref["src"], beam=1)["hyps"]
    ct2 = [hs[0]["tokens"] for hs in hyps]
    gaps = []
    for i, (a, b) in enumerate(zip(ref["greedy"], ct2)):
        if a != b:
            step = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            gaps.append(top_two_gap(ref, i, a[:step]))
    same = len(ct2) - len(gaps)
    return {"max_diff": max_diff, "same": same, "n": len(ct2), "gaps": gaps,
            "passes": max_diff < TOL and same >= 0.995 * len(ct2) and all(g < TOL for g in gaps)}  # fmt: skip


def varied(ref: dict) -> bool:
    """Many distinct greedy outputs, over many distinct tokens (not one repeated token)."""
    greedy = ref["greedy"]
    return len({tuple(g) for g in greedy}) >= len(greedy) // 5 and len({t for g in greedy for t in g}) >= 10


def varied_model(tmp_path: Path, spm_dir: Path, case: dict, pairs) -> tuple[Path, dict]:
    """The bundle of the first seed whose random model gives varied outputs, and mtcli's reference."""
    for seed in range(2, 6):
        bundle = build_bundle(tmp_path / f"bundle-{seed}", spm_dir, case, seed)
        ref = mtcli_side(bundle, *pairs)
        if varied(ref):
            return bundle, ref
    raise AssertionError(f"{case_id(case)}: no seed gave varied greedy outputs")


def export(bundle: Path, out: Path, quantization: str | None = None, mistake: str | None = None) -> Path:
    from mtcli.export import ctranslate2 as writer
    from mtcli.export.command import load_source

    out.mkdir()
    writer.write(load_source(bundle), out, quantization, mistake=mistake)
    return out


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_random_models_are_exported_exactly(case, spm_dirs, pairs, worker, tmp_path):
    from mtcli.export.command import run_export

    bundle, ref = varied_model(tmp_path, spm_dirs[case["joint"]], case, pairs)
    out = run_export(bundle, "ctranslate2", tmp_path / "ct2")
    result = compare(worker, out, ref)
    print(case_id(case), {k: v for k, v in result.items() if k != "gaps"})
    assert result["max_diff"] < TOL
    assert result["same"] >= 0.995 * result["n"]
    assert all(g < TOL for g in result["gaps"]), result["gaps"]


@pytest.fixture(scope="module")
def deepnorm_bundle(spm_dirs, tmp_path_factory) -> Path:
    case = {"norm": "deepnorm", "norm_type": "layernorm", "tie_embeddings": True, "joint": True,
            "activation": "relu", "positions": "sinusoidal", "layers": 2}  # fmt: skip
    return build_bundle(tmp_path_factory.mktemp("deepnorm") / "bundle", spm_dirs[True], case, seed=2)


@pytest.mark.parametrize("mistake", ["transposed_projection", "dropped_bias", "blocked_sinusoid", "unfolded_deepnorm"])
def test_a_wrong_mapping_fails_the_check(mistake, deepnorm_bundle, pairs, worker, tmp_path):
    ref = mtcli_side(deepnorm_bundle, *pairs)
    assert compare(worker, export(deepnorm_bundle, tmp_path / "right"), ref)["passes"]
    wrong = compare(worker, export(deepnorm_bundle, tmp_path / "wrong", mistake=mistake), ref)
    assert not wrong["passes"] and wrong["max_diff"] > 100 * TOL, wrong["max_diff"]


def test_pad_and_bos_are_never_generated(spm_dirs, pairs, worker, tmp_path):
    """A model whose unmasked argmax is often BOS: mtcli's search masks it, and so must the export
    (CTranslate2 decodes such sentences again with BOS and PAD suppressed)."""
    case = {"norm": "pre", "norm_type": "layernorm", "tie_embeddings": False, "joint": True, "layers": 1}
    bundle = build_bundle(tmp_path / "bundle", spm_dirs[True], case, seed=2, boost={2: 6.0, 0: 3.0})
    ref = mtcli_side(bundle, *pairs)
    p = ref["params"]
    forced = [[p.bos_id, *g] for g in ref["greedy"]]
    from mtcli.data.batching import pad_batch

    with torch.no_grad():
        src = pad_batch(ref["src"], p.pad_id, suffix=p.eos_id)
        tgt = pad_batch(forced, p.pad_id)
        top = ref["model"](src, tgt).argmax(-1)
    assert (top.eq(p.bos_id) & tgt.ne(p.pad_id)).sum() > 0.1 * sum(map(len, forced))  # BOS would win unmasked
    result = compare(worker, export(bundle, tmp_path / "ct2"), ref)
    assert result["passes"], result
    assert not any({p.bos_id, p.pad_id} & set(g) for g in ref["greedy"])


@pytest.fixture(scope="module")
def trained(trained_bundle, tmp_path_factory) -> Path:
    """The session's tiny trained model (conftest.py), and its CTranslate2 export made by the command line."""
    run = tmp_path_factory.mktemp("trained-ct2")
    (run / "model").symlink_to(trained_bundle)
    made = cli("export", str(trained_bundle), "--to", "ctranslate2", "-o", str(run / "ct2"))
    assert made.returncode == 0 and made.stdout == "", made.stderr
    return run


def test_trained_model_is_exported_exactly(trained, worker):
    src, tgt = read("test_2016_flickr.en.gz", N_SENT), read("test_2016_flickr.de.gz", N_SENT)
    ref = mtcli_side(trained / "model", src, tgt)
    result = compare(worker, trained / "ct2", ref)
    print({k: v for k, v in result.items() if k != "gaps"})
    assert result["passes"], result
    assert varied(ref)
    # Beam search too: mtcli's and CTranslate2's best of 4 (GNMT-ranked) agree nearly always.
    from mtcli.data.batching import pad_batch
    from mtcli.inference.search import beam_search

    p = replace(ref["params"], beam_size=4, nbest=4)
    mine = [hs[0].tokens for hs in beam_search(ref["model"], pad_batch(ref["src"], p.pad_id, suffix=p.eos_id), p)]
    theirs = worker.ask(op="search", model=str(trained / "ct2"), src=ref["src"], beam=4)["hyps"]
    same = sum(a == b[0]["tokens"] for a, b in zip(mine, theirs))
    print(f"beam 4: {same}/{len(mine)} same best hypothesis")
    assert same >= 0.97 * len(mine)


def test_int8_export_stays_close(trained, worker, tmp_path):
    src, tgt = read("test_2016_flickr.en.gz", N_SENT), read("test_2016_flickr.de.gz", N_SENT)
    ref = mtcli_side(trained / "model", src, tgt)
    result = compare(worker, export(trained / "model", tmp_path / "int8", "int8"), ref)
    per_token = result["max_diff"]
    print("int8", {k: v for k, v in result.items() if k != "gaps"})
    assert TOL < per_token < 1.0  # int8 weights: not the float32 numbers, but near them
    assert result["same"] >= 0.5 * result["n"]


# ----------------------------------------------------------------------------- translate on an export

DRIVER = ("import sys; from mtcli.cli import main\n"
          "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
          "print('torch imported' if 'torch' in sys.modules else 'torch never imported', file=sys.stderr)\n"
          "sys.exit(code)")  # fmt: skip


def translate(model: Path, *args, input: str | None = None) -> subprocess.CompletedProcess:
    """`mtcli translate --model MODEL ARGS` through a driver that reports whether torch was imported."""
    return subprocess.run([sys.executable, "-c", DRIVER, "translate", "--model", str(model), *args], cwd=REPO,
                          input=input, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_translate_on_an_export_never_imports_torch_and_matches_the_bundle(trained, tmp_path):
    lines = ["A man is walking.", "", "Two dogs play in the snow.", "A girl with a red hat sings a song."]
    src = tmp_path / "src.en"
    src.write_text("\n".join(lines) + "\n")
    for beam in ("1", "4"):
        got = translate(trained / "ct2", "-i", str(src), "--beam", beam)
        assert got.returncode == 0, got.stderr
        assert got.stderr.strip().splitlines()[-1] == "torch never imported"
        expected = cli("translate", "-m", str(trained / "model"), "-i", str(src), "--beam", beam)
        assert got.stdout == expected.stdout and got.stdout.split("\n")[1] == ""
    dest = tmp_path / "out.txt"
    js = translate(trained / "ct2", "--format", "jsonl", "--nbest", "3", "--beam", "3", "-o", str(dest),
                   "--set", "decode.length_penalty=0.6", input="A dog runs.\n")  # fmt: skip
    assert js.returncode == 0 and js.stdout == "", js.stderr
    hyps = json.loads(dest.read_text())["hypotheses"]
    assert len(hyps) == 3 and [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
    for h in hyps:  # GNMT: logprob / ((5 + tokens + EOS) / 6) ** alpha
        assert set(h) == {"text", "tokens", "score", "logprob"}
        assert h["score"] == pytest.approx(h["logprob"] / ((6 + h["tokens"]) / 6) ** 0.6, abs=2e-4)
    bad = translate(trained / "ct2", "x", "--set", "model.norm=post")
    assert bad.returncode == 2 and "decode." in bad.stderr


# ----------------------------------------------------------------------------- what is refused


def fake_source(tok=None, **model) -> SimpleNamespace:
    keys = {"norm": "pre", "residual": True, "activation": "relu", **model}
    return SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(**keys)), tok=tok or SimpleNamespace())


@pytest.mark.parametrize("model, key", [({"norm": "none"}, "model.norm=none"),
                                        ({"residual": False}, "model.residual=false")])  # fmt: skip
def test_what_ctranslate2_cannot_compute_is_refused_in_one_line(model, key):
    from mtcli.export.ctranslate2 import check_supported

    with pytest.raises(MtcliError, match=key) as err:
        check_supported(fake_source(**model))
    assert "\n" not in str(err.value)
    with pytest.raises(MtcliError, match="^imported vocabularies are not exported to CTranslate2 yet$"):
        check_supported(fake_source(tok=SimpleNamespace(id_map=[5, 7])))


def test_export_command_errors_and_replacing_an_export(spm_dirs, tmp_path, monkeypatch):
    case = {"norm": "none", "norm_type": "layernorm", "tie_embeddings": True, "joint": True, "layers": 1}
    bundle = build_bundle(tmp_path / "none", spm_dirs[True], case)
    out = cli("export", str(bundle), "--to", "ctranslate2", "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and out.stderr.startswith("error: model.norm=none") and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    case["norm"] = "post"
    bundle = build_bundle(tmp_path / "post", spm_dirs[True], case)
    for _ in range(2):  # the second run replaces the first export
        assert cli("export", str(bundle), "--to", "ctranslate2", "-o", str(tmp_path / "x")).returncode == 0
    assert {"model.bin", "spm.model", "mtcli-ct2.json", "mtcli-export.json"} <= {p.name for p in (tmp_path / "x").iterdir()}
    import importlib

    from mtcli.export import ctranslate2 as writer

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (_ for _ in ()).throw(ImportError(name))
                        if name == "ctranslate2" else real(name, *a))  # fmt: skip
    with pytest.raises(MtcliError, match=r"ctranslate2 is not installed: pip install 'mtcli\[export\]'"):
        writer.check_installed()
