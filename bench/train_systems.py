"""train_bench's in-process systems, each run in its own child (`run_worker`): mtcli's
`Trainer.update` (also compiled, or imported from another tree), Hugging Face Marian and the
nn.Transformer reference in a plain training loop.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from common import D_MODEL, FFN, HEADS, LAYERS, PAD, THREADS, VOCAB, marian_model
from train_setup import (
    CLIP,
    DROPOUT,
    LR,
    MAX_TOKENS,
    SMOOTHING,
    base_config,
    collated,
    load_train,
    manifest,
    random_batches,
    run_windows,
)

from mtcli.files import write_text


def worker_mtcli(args, compile_: bool) -> dict:
    """mtcli's Trainer.update on its own token batches (epoch 1, seed 1)."""
    from mtcli.data.batching import token_batches
    from mtcli.data.manifest import Manifest
    from mtcli.training.distributed import Dist
    from mtcli.training.trainer import Trainer

    cfg = base_config([f"train.compile={str(compile_).lower()}"])
    trainer = Trainer(cfg, Manifest.from_dict(manifest()), Dist.setup("cpu", THREADS))
    batches = token_batches(trainer.train_src.lengths, trainer.train_tgt.lengths, MAX_TOKENS, cfg.train.seed, 1)
    feed = iter(batches * 2)

    def step() -> float:
        row = trainer.update([next(feed)])
        return row["ntokens"]

    warmup = args.warmup + (1 if compile_ else 0)  # compiling (and recompiling) needs longer
    result = run_windows(step, args, warmup)
    result["params"] = sum(p.numel() for p in trainer.model.parameters())
    result["mean_batch_target_tokens"] = round(sum(_tgt_tokens(trainer, b) for b in batches) / len(batches), 1)
    return result


def _tgt_tokens(trainer, idx) -> int:
    return int(sum(trainer.train_tgt.lengths[i] + 1 for i in idx))


def plain_loop(model, forward, batches) -> tuple:
    """A textbook training step over pre-collated batches: mean label-smoothed CE, Adam, clip."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-9)
    feed = iter(batches * 2)
    model.train()

    def step() -> float:
        b = next(feed)
        logits = forward(b["src"], b["tgt_in"])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b["tgt_out"].reshape(-1),
                               ignore_index=PAD, label_smoothing=SMOOTHING)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return float(b["ntokens"])

    return step


def timed_batches(args) -> int:
    """How many batches the warm-up, kept and extra windows can take at most."""
    return (args.warmup + args.windows + args.extra) * args.window_steps


def worker_hf(args) -> dict:
    """MarianMTModel of the base size on mtcli's batches (same padded tensors)."""
    from mtcli.data.batching import token_batches

    model = marian_model(DROPOUT)
    src, tgt = load_train()
    batches = collated(src, tgt, token_batches(src.lengths, tgt.lengths, MAX_TOKENS, 1, 1)[: timed_batches(args)])

    def forward(s, t):
        return model(input_ids=s, attention_mask=s.ne(PAD), decoder_input_ids=t).logits

    result = run_windows(plain_loop(model, forward, batches), args, args.warmup)
    result["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["attn_implementation"] = model.config._attn_implementation
    return result


def reference_model():
    """nn.Embedding (x sqrt(D)) + sinusoidal positions + nn.Transformer (pre-LN) + tied nn.Linear."""
    import torch
    from torch import nn

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
            nn.init.normal_(self.embed.weight, std=D_MODEL**-0.5)
            pos = torch.arange(1024.0)[:, None] * torch.exp(torch.arange(0, D_MODEL, 2) * (-math.log(1e4) / D_MODEL))
            self.register_buffer("pos", torch.stack([pos.sin(), pos.cos()], -1).flatten(1))
            self.transformer = nn.Transformer(D_MODEL, HEADS, LAYERS, LAYERS, FFN, DROPOUT,
                                              batch_first=True, norm_first=True)  # fmt: skip
            self.out = nn.Linear(D_MODEL, VOCAB, bias=False)
            self.out.weight = self.embed.weight
            self.drop = nn.Dropout(DROPOUT)

        def embed_at(self, ids):
            return self.drop(self.embed(ids) * D_MODEL**0.5 + self.pos[: ids.size(1)])

        def forward(self, src, tgt):
            causal = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).triu(1)
            h = self.transformer(self.embed_at(src), self.embed_at(tgt), tgt_mask=causal,
                                 src_key_padding_mask=src.eq(PAD), tgt_key_padding_mask=tgt.eq(PAD),
                                 memory_key_padding_mask=src.eq(PAD), tgt_is_causal=True)  # fmt: skip
            return self.out(h)

    return Reference()


def worker_reference(args) -> dict:
    import torch

    torch.manual_seed(1)
    model = reference_model()
    src, tgt = load_train()
    index_batches, size = random_batches(src, tgt)
    batches = collated(src, tgt, index_batches[: timed_batches(args)])
    result = run_windows(plain_loop(model, model, batches), args, args.warmup)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["sentences_per_batch"] = size
    result["padded_tokens_mean"] = round(statistics.mean(
        b["src"].size(0) * max(b["src"].size(1), b["tgt_out"].size(1)) for b in batches), 1)  # fmt: skip
    return result


def run_worker(args) -> None:
    """Child process: one in-process system; writes its result JSON."""
    import torch

    torch.set_num_threads(THREADS)
    name = args.worker
    if name in ("mtcli", "mtcli-compile", "mtcli-baseline"):
        result = worker_mtcli(args, compile_=name == "mtcli-compile")
    elif name == "hf":
        result = worker_hf(args)
    else:
        result = worker_reference(args)
    result["torch_threads"] = torch.get_num_threads()
    result["mtcli_from"] = str(Path(sys.modules["mtcli"].__file__).parent)
    write_text(Path(args.result), json.dumps(result))
