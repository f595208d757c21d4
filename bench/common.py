"""What the bench scripts share: the checkout's path, the base size every speed benchmark uses,
waiting for a quiet machine, how busy the machine was, its description for a results file, the
Hugging Face Marian peer, and picking checkpoints within a training-time budget.

The scripts run as `python bench/X.py`, so this folder is first on sys.path and they import it as
`from common import ...`. Nothing here imports torch, transformers or mtcli at import time (the
CTranslate2 child of translate_bench must never import torch).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]

# The base size of configs/base.yaml (joint 8k SentencePiece vocabulary), on 2 threads.
PAD, UNK, BOS, EOS = 0, 1, 2, 3
VOCAB, D_MODEL, HEADS, FFN, LAYERS = 8000, 256, 4, 1024, 3
THREADS = 2

T = TypeVar("T")


# ----------------------------------------------------------------------------- a shared machine


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # minus idle and iowait


def machine_cores(t0: tuple[int, int], t1: tuple[int, int]) -> float:
    """Cores the whole machine kept busy between two cpu_ticks() readings."""
    return (t1[0] - t0[0]) / max(t1[1] - t0[1], 1) * (os.cpu_count() or 1)


def other_cores(machine: float, own_cpu_s: float, wall_s: float) -> float:
    """Cores other processes kept busy: the machine's busy cores minus our own CPU time per second."""
    return max(0.0, machine - own_cpu_s / wall_s)


def wait_for_quiet(*, limit: float, threshold: float, interval: float = 1.0) -> float:
    """Wait until other jobs leave the cores idle; returns the seconds waited (not rounded).

    Measures the machine's busy cores over `interval` seconds, again and again, until they are
    under `threshold`, or until `limit` seconds have gone by (at least one measurement is taken).
    Each caller passes its own limits.
    """
    start = time.perf_counter()
    while True:
        t0 = cpu_ticks()
        time.sleep(interval)
        if machine_cores(t0, cpu_ticks()) < threshold or time.perf_counter() - start >= limit:
            return time.perf_counter() - start


def machine(*, nproc_command: bool = False, memory: bool = False) -> dict:
    """The CPU model (/proc/cpuinfo "model name"), its core count and the Python version.

    nproc_command: count the cores as `nproc` does (the ones this process may use), else
    os.cpu_count() (every online core); memory: also the physical memory in GiB ("mem_gb").
    """
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    if nproc_command:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    else:
        nproc = os.cpu_count()
    out = {"nproc": nproc, "cpu": cpu, "python": platform.python_version()}
    if memory:
        out["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return out


@contextmanager
def repo_cwd() -> Iterator[None]:
    """Run the body from the checkout (MTCLI_DATA defaults to ../shared/data relative to it)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- peers


def marian_model(dropout: float, **config):
    """Hugging Face `MarianMTModel` of the base size, seeded with 1: post-LN, ReLU, tied and scaled
    embeddings, decoding from BOS; `dropout` also sets activation_dropout (attention dropout 0).
    `config` adds or overrides MarianConfig fields."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(1)
    settings = dict(
        vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=BOS, share_encoder_decoder_embeddings=True, scale_embedding=True,
        activation_function="relu", dropout=dropout, attention_dropout=0.0, activation_dropout=dropout,
    )  # fmt: skip
    return MarianMTModel(MarianConfig(**{**settings, **config}))


# ----------------------------------------------------------------------------- quality budgets


def last_within(checkpoints: Sequence[T], seconds: Callable[[T], float], minutes: float, average: int) -> list[T]:
    """The last `average` of `checkpoints` (oldest first) whose training time `seconds(c)` is within
    `minutes` (1 s of slack); empty when none is."""
    within = [c for c in checkpoints if seconds(c) <= minutes * 60 + 1.0]
    return within[-average:]
