"""`mtcli export --to huggingface` computes what mtcli computes: Transformers' log-probabilities within
1e-4 of mtcli's, greedy `generate` identical (any divergence at a near-tie), `AutoTokenizer` ids equal
to mtcli's on test2016, over every architecture the export supports and a tiny trained model; a
deliberately wrong mapping fails these checks; what Marian/Pegasus cannot compute is refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from bundle_helpers import assert_varied, lines, random_bundle, spm_dir

pytest.importorskip("transformers")

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

from mtcli.errors import MtcliError  # noqa: E402
from mtcli.export import huggingface  # noqa: E402
from mtcli.export.command import load_source, run_export  # noqa: E402
from mtcli.export.hf_names import entries, from_hf, perm  # noqa: E402
from mtcli.inference.translator import load_translator  # noqa: E402

MAX_NEW = 24
FLOOR = -30.0
DECODE = {"max_len_a": 0.0, "max_len_b": MAX_NEW, "beam_size": 1}
# (norm, activation, joint vocabulary, tied embeddings, seed): every combination the export supports
# (seeds whose random model gives varied greedy outputs: some random post-LN models repeat one token).
ARCHS = [("post", "relu", True, True, 0), ("post", "gelu", False, True, 0), ("post", "silu", True, False, 1),
         ("post", "relu", False, False, 1), ("pre", "gelu", True, True, 0), ("pre", "silu", True, True, 0),
         ("deepnorm", "relu", True, True, 0)]  # fmt: skip


@pytest.fixture(scope="module")
def spms(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("spm")
    return {True: spm_dir(root / "joint", True), False: spm_dir(root / "separate", False)}


@pytest.fixture(scope="module")
def sources():
    return lines("en", "test_2016_flickr", 1000)


def export(bundle, out, **kw):
    run_export(bundle, "huggingface", out, **kw)
    return AutoModelForSeq2SeqLM.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))


def mtcli_greedy(bundle, ids: list[list[int]]) -> list[list[int]]:
    """mtcli's greedy token ids (the translator's search with at most MAX_NEW tokens)."""
    from mtcli.data.batching import pad_batch
    from mtcli.inference.search import beam_search

    tr = load_translator(bundle, beam=1, overrides=["decode.max_len_a=0", f"decode.max_len_b={MAX_NEW}"])
    hyps = beam_search(tr.model, pad_batch(ids, tr.params.pad_id, suffix=tr.params.eos_id), tr.params)
    return [h[0].tokens for h in hyps]


def mtcli_logprobs(model, src_ids, tgt_in):
    from mtcli.data.batching import pad_batch

    src = pad_batch(src_ids, 0, suffix=3)
    with torch.no_grad():
        return torch.log_softmax(model(src, tgt_in), -1)


def check_equal(bundle, hf, hf_tok, texts, tol=1e-4):
    """Teacher-forced log-probabilities within tol and greedy outputs identical (near-ties aside)."""
    src = load_source(bundle)
    ids = src.tok.encode_src(texts)
    ours = mtcli_greedy(bundle, ids)
    enc = hf_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        gen = hf.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=MAX_NEW, min_new_tokens=1)
    special = {src.tok.pad_id, src.tok.bos_id, src.tok.eos_id}
    theirs = [[t for t in row if t not in special] for row in gen.tolist()]
    # log-probabilities along the Transformers outputs (the same targets for both)
    tgt_in = gen[:, :-1].clone()
    with torch.no_grad():
        hf_lp = torch.log_softmax(hf(**enc, decoder_input_ids=tgt_in).logits, -1)
    our_lp = mtcli_logprobs(src.model, ids, tgt_in)
    live = tgt_in.ne(src.tok.pad_id) | (torch.arange(tgt_in.size(1)) == 0)  # positions before padding
    # Over every token mtcli gives a probability above 1e-13 (float32 rounding of far-off logits
    # of these deliberately sharp random models is larger than that of any probability that matters).
    relevant = live[..., None] & (our_lp > FLOOR)
    diff = (hf_lp - our_lp).abs()[relevant].max().item()
    assert diff < tol, f"log-probabilities differ by {diff}"
    same = [a == b for a, b in zip(ours, theirs)]
    for i in (i for i, s in enumerate(same) if not s):
        gap = _first_step_gap(src.model, ids[i], gen[i].tolist(), src.tok)
        assert gap < 1e-4, f"line {i}: greedy outputs differ where mtcli's top two differ by {gap}"
    assert sum(same) >= 0.995 * len(texts), f"{len(texts) - sum(same)} of {len(texts)} greedy outputs differ"
    assert_varied(theirs)
    return diff


def _first_step_gap(model, src_ids, hf_out, tok):
    """mtcli's top-two log-probability gap at the first step where its greedy choice differs."""
    tgt = [tok.bos_id]
    for t in hf_out[1:]:
        lp = mtcli_logprobs(model, [src_ids], torch.tensor([tgt]))[0, -1]
        lp[[tok.pad_id, tok.bos_id]] = float("-inf")
        top = lp.topk(2)
        if top.indices[0].item() != t:
            return (top.values[0] - top.values[1]).item()
        tgt.append(t)
    return 0.0


@pytest.mark.parametrize("norm,activation,joint,tied,seed", ARCHS)
def test_export_matches_mtcli(norm, activation, joint, tied, seed, spms, sources, tmp_path):
    bundle = random_bundle(tmp_path / "b", spms[joint], seed=seed, norm=norm, activation=activation,
                           tie_embeddings=tied, decode=DECODE)  # fmt: skip
    hf, hf_tok = export(bundle, tmp_path / "hf")
    assert type(hf).__name__ == ("PegasusForConditionalGeneration" if norm == "pre" else "MarianMTModel")
    check_equal(bundle, hf, hf_tok, sources[:200])
    # AutoTokenizer numbers test2016 exactly as mtcli does (plus EOS)
    ours = load_source(bundle).tok.encode_src(sources)
    assert [hf_tok(s).input_ids for s in sources] == [s + [3] for s in ours]
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["num_beams"] == 1 and gen["decoder_start_token_id"] == 2


def test_a_tiny_trained_model_exports_exactly(trained_bundle, tmp_path, sources):
    hf, hf_tok = export(trained_bundle, tmp_path / "hf")
    check_equal(trained_bundle, hf, hf_tok, sources[:300])


MISTAKES = {
    "transposed projection": lambda name, t: t.T if name.endswith("layers.0.self_attn.q_proj.weight") else t,
    "dropped bias": lambda name, t: t * 0 if name.endswith("layers.0.fc1.bias") else t,
}


@pytest.mark.parametrize("mistake", [*MISTAKES, "interleaved sinusoid"])
def test_a_wrong_mapping_fails_the_check(mistake, spms, sources, tmp_path, monkeypatch):
    bundle = random_bundle(tmp_path / "b", spms[True], norm="post", decode=DECODE)
    if mistake == "interleaved sinusoid":  # mtcli's own channel order, as if Marian's were the same
        monkeypatch.setattr(huggingface, "perm", lambda d: torch.arange(d))
    else:
        real = huggingface.hf_model
        monkeypatch.setattr(huggingface, "hf_model", lambda s: real(s, mutate=MISTAKES[mistake]))
    hf, hf_tok = export(bundle, tmp_path / "hf")
    with pytest.raises(AssertionError):
        check_equal(bundle, hf, hf_tok, sources[:100])


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_the_exported_weights_rebuild_an_identical_mtcli_model(norm, spms, tmp_path):
    from safetensors.torch import load_file

    bundle = random_bundle(tmp_path / "b", spms[True], norm=norm)
    run_export(bundle, "huggingface", tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    model = load_source(bundle).model
    m = load_source(bundle).cfg.model
    ours = model.state_dict()
    rebuilt = {}
    for e in entries(m.encoder_layers, m.decoder_layers, norm == "pre", True, True, False):
        name = e.hf if e.hf in state else "model.shared.weight"
        rebuilt.setdefault(e.mtcli, from_hf(state[name], e.dims, perm(m.d_model)))
    assert set(rebuilt) == set(ours)
    assert all(torch.equal(rebuilt[k], ours[k]) for k in ours)


@pytest.mark.parametrize("key,value,named", [
    ("norm_type", "rmsnorm", "model.norm_type=rmsnorm"), ("positions", "learned", "model.positions=learned"),
    ("norm", "none", "model.norm=none"), ("residual", False, "model.residual=false"),
])  # fmt: skip
def test_what_no_class_computes_is_refused(key, value, named, spms, tmp_path):
    bundle = random_bundle(tmp_path / "b", spms[True], **{"norm": "post", key: value})
    with pytest.raises(MtcliError, match=named):
        run_export(bundle, "huggingface", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_target_and_quantization_errors(spms, tmp_path, monkeypatch):
    bundle = random_bundle(tmp_path / "b", spms[True], norm="pre")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(MtcliError, match="not a folder `mtcli export` wrote"):
        run_export(bundle, "huggingface", other)
    assert (other / "notes.txt").read_text() == "keep"
    with pytest.raises(MtcliError, match="--quantization int8"):
        run_export(bundle, "huggingface", tmp_path / "hf", "int8")
    run_export(bundle, "huggingface", tmp_path / "hf", "float16")  # a previous export is replaced
    run_export(bundle, "huggingface", tmp_path / "hf", "bfloat16")
    assert AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "hf")).dtype == torch.bfloat16
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MtcliError, match=r"mtcli\[export\]"):
        run_export(bundle, "huggingface", tmp_path / "hf2")
