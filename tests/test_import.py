"""`mtcli import huggingface` on tiny random `MarianMTModel`s saved with `save_pretrained` and real
SentencePiece models: ids equal to MarianTokenizer's, log-probabilities within 1e-4 of Transformers',
greedy output identical to `generate`, the training loss equal within 1e-5; a wrong mapping fails;
bad folders get one line naming the file or key; export then import gives back the same bundle."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from bundle_helpers import assert_varied, lines, random_bundle, spm_dir
from run_helpers import REPO

pytest.importorskip("transformers")

from transformers import MarianConfig, MarianMTModel, MarianTokenizer  # noqa: E402

from mtcli.errors import MtcliError  # noqa: E402
from mtcli.imports import marian  # noqa: E402
from mtcli.imports.marian import run_import  # noqa: E402
from mtcli.inference.bundle import load_bundle  # noqa: E402
from mtcli.inference.translator import load_translator  # noqa: E402
from mtcli.training.optim import label_smoothed_nll  # noqa: E402

MAX_NEW = 20
CODES = [">>fra<<", ">>deu<<"]


@pytest.fixture(scope="module")
def spms(tmp_path_factory, data_dir):
    return spm_dir(tmp_path_factory.mktemp("spm") / "sep", joint=False, vocab_size=400)


def marian_vocab(pieces: list[str], seed: int) -> dict[str, int]:
    """Marian's numbering: </s> 0, <unk> 1, the other pieces shuffled, <pad> last."""
    rest = [p for p in dict.fromkeys(pieces) if p not in ("<pad>", "<unk>", "</s>", "<s>")]
    random.Random(seed).shuffle(rest)
    return {p: i for i, p in enumerate(["</s>", "<unk>", *rest, "<pad>"])}


def marian_dir(root, spms, activation="swish", shared=True, seed=0):
    """A random MarianMTModel with a shuffled vocab.json, saved as save_pretrained saves OPUS-MT."""
    import sentencepiece as spm

    root.mkdir(parents=True)
    shutil.copyfile(spms / "spm.src.model", root / "source.spm")
    shutil.copyfile(spms / "spm.tgt.model", root / "target.spm")
    src_p = [spm.SentencePieceProcessor(model_file=str(root / "source.spm")).id_to_piece(i) for i in range(400)]
    tgt_p = [spm.SentencePieceProcessor(model_file=str(root / "target.spm")).id_to_piece(i) for i in range(400)]
    src_v = marian_vocab((CODES if shared else []) + src_p + (tgt_p if shared else []), seed)
    tgt_v = src_v if shared else marian_vocab(tgt_p, seed + 1)
    (root / "vocab.json").write_text(json.dumps(src_v))
    if not shared:
        (root / "target_vocab.json").write_text(json.dumps(tgt_v))
    pad = len(src_v) - 1
    config = MarianConfig(
        vocab_size=len(src_v), decoder_vocab_size=len(tgt_v), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        activation_function=activation, max_position_embeddings=128, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, share_encoder_decoder_embeddings=shared, dropout=0.0, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():  # Transformers' init (std 0.02) gives one output for every input: rescale
        for name, p in model.named_parameters():
            if "embed_tokens" in name or name == "model.shared.weight" or name == "lm_head.weight":
                p.normal_(0.0, 3.0 * 32**-0.5)
            elif p.dim() == 2:
                torch.nn.init.xavier_uniform_(p)
                p.mul_(1.5 if ("q_proj" in name or "k_proj" in name) else 10**0.5)
            elif name.endswith("layer_norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.add_(0.02 * torch.randn_like(p))
        model.final_logits_bias.normal_(0.0, 0.5)
    model.generation_config.suppress_tokens = [pad]
    model.save_pretrained(str(root))
    tok = MarianTokenizer(str(root / "source.spm"), str(root / "target.spm"), str(root / "vocab.json"),
                          target_vocab_file=str(root / "target_vocab.json") if not shared else None,
                          separate_vocabs=not shared, source_lang="en", target_lang="de")  # fmt: skip
    tok.save_pretrained(str(root))
    return root


def compare(directory, bundle, texts, tol=1e-4):
    """Transformers against the imported bundle: ids, log-probabilities, greedy output, loss."""
    from mtcli.data.batching import pad_batch
    from mtcli.inference.search import beam_search

    hf = MarianMTModel.from_pretrained(str(directory)).eval()
    hf_tok = MarianTokenizer.from_pretrained(str(directory))
    net, _, tok, _ = load_bundle(bundle)
    ids = tok.encode_src(texts)
    enc = hf_tok(texts, return_tensors="pt", padding=True)
    assert [hf_tok(t).input_ids for t in texts] == [s + [tok.eos_id] for s in ids], "token ids differ"
    src = pad_batch(ids, tok.pad_id, suffix=tok.eos_id)
    with torch.no_grad():
        gen = hf.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=MAX_NEW, min_new_tokens=1,
                          forced_eos_token_id=None)
        tgt_in = gen[:, :-1]
        hf_lp = torch.log_softmax(hf(**enc, decoder_input_ids=tgt_in).logits, -1)
        our_lp = torch.log_softmax(net(src, tgt_in), -1)
    live = (tgt_in.ne(tok.pad_id) | (torch.arange(tgt_in.size(1)) == 0))[..., None] & (our_lp > -30)
    diff = (hf_lp - our_lp).abs()[live].max().item()
    assert diff < tol, f"log-probabilities differ by {diff}"
    tr = load_translator(bundle, beam=1, overrides=["decode.max_len_a=0", f"decode.max_len_b={MAX_NEW}"])
    ours = [h[0].tokens for h in beam_search(tr.model, src, tr.params)]
    special = {tok.pad_id, tok.eos_id}
    theirs = [[t for t in row if t not in special] for row in gen.tolist()]
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.995 * len(texts), f"{len(texts) - same} of {len(texts)} greedy outputs differ"
    assert_varied(theirs)
    # the training loss on a batch (label smoothing 0, mean over target tokens)
    labels = hf_tok(text_target=lines("de", "val", len(texts)), return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        hf_loss = hf(**enc, labels=labels.masked_fill(labels.eq(tok.pad_id), -100)).loss.item()
        tgt_in = torch.cat([torch.full_like(labels[:, :1], tok.bos_id), labels[:, :-1]], 1)
        _, nll = label_smoothed_nll(net(src, tgt_in), labels, 0.0, tok.pad_id)
    ours_loss = (nll / labels.ne(tok.pad_id).sum()).item()
    assert abs(ours_loss - hf_loss) < 1e-5, (ours_loss, hf_loss)


@pytest.mark.parametrize("activation,shared,seed", [("swish", True, 0), ("relu", True, 1), ("swish", False, 0)])
def test_import_matches_transformers(activation, shared, seed, spms, tmp_path):
    directory = marian_dir(tmp_path / "opus-mt-en-de", spms, activation, shared, seed)
    bundle = run_import(directory, tmp_path / "bundle")
    compare(directory, bundle, lines("en", "test_2016_flickr", 200))
    cfg = load_bundle(bundle)[1]
    assert cfg.model.activation == ("silu" if activation == "swish" else "relu") and cfg.model.output_bias
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("en", "de")


def test_a_target_language_token_is_kept_whole(spms, tmp_path):
    directory = marian_dir(tmp_path / "m", spms)
    bundle = run_import(directory, tmp_path / "bundle")
    tok = load_bundle(bundle)[2]
    hf_tok = MarianTokenizer.from_pretrained(str(directory))
    text = lines("en", "val", 5)
    for code in CODES:
        assert [s + [0] for s in tok.encode_src([f"{code} {t}" for t in text])] == \
            [hf_tok(f"{code} {t}").input_ids for t in text]  # fmt: skip
    tr = load_translator(bundle, overrides=[f"decode.src_prefix={CODES[0]}"])
    assert tr.src_prefix == CODES[0] and tr.translate(["", "A dog."])[0] == []


@pytest.mark.parametrize("mistake", ["interleaved sinusoid", "dropped final_logits_bias", "unmapped vocabulary"])
def test_a_wrong_mapping_fails(mistake, spms, tmp_path, monkeypatch):
    directory = marian_dir(tmp_path / "m", spms)
    if mistake == "interleaved sinusoid":
        monkeypatch.setattr(marian, "perm", lambda d: torch.arange(d))
    if mistake == "dropped final_logits_bias":
        real = marian.load_weights
        monkeypatch.setattr(marian, "load_weights", lambda d: {k: v for k, v in real(d).items()
                                                                  if k != "final_logits_bias"})  # fmt: skip
    bundle = run_import(directory, tmp_path / "bundle")
    if mistake == "unmapped vocabulary":
        (bundle / "spm.ids.json").unlink()
    with pytest.raises(AssertionError):
        compare(directory, bundle, lines("en", "test_2016_flickr", 100))


def test_pytorch_model_bin_and_the_command_line(spms, tmp_path):
    directory = marian_dir(tmp_path / "m", spms, shared=True)
    from safetensors.torch import load_file

    torch.save(load_file(str(directory / "model.safetensors")), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    out = subprocess.run([sys.executable, "-m", "mtcli", "import", "huggingface", str(directory), "-o",
                          str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    compare(directory, tmp_path / "b", lines("en", "val", 50))
    tr = subprocess.run([sys.executable, "-m", "mtcli", "translate", "-m", str(tmp_path / "b"), "A dog runs.",
                         "--format", "jsonl"], capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert tr.returncode == 0, tr.stderr
    assert json.loads(tr.stdout)["hypotheses"][0]["tokens"] > 0


def test_bad_folders_are_named(spms, tmp_path):
    directory = marian_dir(tmp_path / "m", spms)
    cases = []
    bad = tmp_path / "no-spm"
    shutil.copytree(directory, bad)
    (bad / "source.spm").unlink()
    cases.append((bad, r"source\.spm: missing"))
    other = tmp_path / "bart"
    shutil.copytree(directory, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "bart"}))
    cases.append((other, r"config\.json: model_type='bart'"))
    act = tmp_path / "act"
    shutil.copytree(directory, act)
    (act / "config.json").write_text(json.dumps({**cfg, "activation_function": "gelu_new"}))
    cases.append((act, "activation_function='gelu_new'"))
    noweights = tmp_path / "noweights"
    shutil.copytree(directory, noweights)
    (noweights / "model.safetensors").unlink()
    cases.append((noweights, "no model.safetensors or pytorch_model.bin"))
    cases.append((tmp_path / "absent", "not a folder"))
    for folder, message in cases:
        with pytest.raises(MtcliError, match=message):
            run_import(folder, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(MtcliError, match="not an mtcli model bundle"):
        run_import(directory, mine)


@pytest.mark.parametrize("joint,tied", [(True, True), (False, True), (True, False)])
def test_export_then_import_gives_back_the_same_bundle(joint, tied, tmp_path, data_dir):
    from mtcli.export.command import run_export

    spm = spm_dir(tmp_path / "spm", joint=joint, vocab_size=400)
    bundle = random_bundle(tmp_path / "b", spm, seed=1, norm="post", activation="silu", tie_embeddings=tied)
    run_export(bundle, "huggingface", tmp_path / "hf")
    back = run_import(tmp_path / "hf", tmp_path / "back")
    (a, cfg_a, _, _), (b, cfg_b, _, _) = load_bundle(bundle), load_bundle(back)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert cfg_a.model == cfg_b.model and cfg_a.decode == cfg_b.decode
    text = lines("en", "val", 100)
    assert [h[0]["text"] for h in load_translator(bundle).translate(text)] == \
        [h[0]["text"] for h in load_translator(back).translate(text)]  # fmt: skip


def test_an_imported_model_fine_tunes_with_its_own_numbering(spms, tmp_path):
    import numpy as np
    import yaml

    from mtcli.data.manifest import read_manifest
    from mtcli.data.spm import Tokenizer

    directory = marian_dir(tmp_path / "opus-mt-en-de", spms, seed=0)
    bundle = run_import(directory, tmp_path / "bundle")
    m30k = "${MTCLI_DATA}/multi30k"
    config = {
        "name": "ft", "run_dir": str(tmp_path / "runs" / "ft"),
        "data": {"src_lang": "en", "tgt_lang": "de", "max_train_pairs": 600, "valid_size": 50, "test_size": 50,
                 "filters": {"max_tokens": 120},
                 "train": {"type": "pair", "src": f"{m30k}/train.en.gz", "tgt": f"{m30k}/train.de.gz"}},
        "train": {"init_from": str(bundle), "max_steps": 30, "max_tokens": 1024, "lr": 3e-3, "warmup_steps": 5,
                  "log_every": 5, "eval_every": 1000, "save_every": 1000, "label_smoothing": 0.0, "seed": 1},
    }  # fmt: skip
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "mtcli", "train", str(tmp_path / "ft.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "ft"
    manifest = read_manifest(run / "data")
    assert manifest.ids["pad_id"] == manifest.vocab.pad_id == len(json.loads((directory / "vocab.json").read_text())) - 1
    assert (run / "data" / "spm.ids.json").read_bytes() == (bundle / "spm.ids.json").read_bytes()
    # prepare encoded the corpus through the imported numbering, as the tokenizer does
    tok = Tokenizer(run / "data")
    valid_src = (run / "data" / "valid.src.txt").read_text(encoding="utf-8").splitlines()
    from mtcli.data.splits import load_pair

    src_split, _ = load_pair(run / "data", "valid", manifest.dtype)
    assert [list(np.asarray(src_split[i])) for i in range(3)] == tok.encode_src(valid_src[:3])
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0]
    assert (run / "model" / "spm.ids.json").is_file()
    assert load_translator(run / "model").translate(["A dog runs."])[0][0]["tokens"] > 0
