"""The experiment config: one pydantic schema, YAML loading and dotted `--set` overrides.

Every default lives in this file and nowhere else; the rest of mtcli reads typed fields.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtcli.errors import MtcliError
from mtcli.safe_yaml import load_yaml

# Corpus paths may say `${MTCLI_DATA}`; unset, it points at the shared corpora beside the checkout.
DEFAULT_DATA_ROOT = "../shared/data"

# Where the norm sits around each residual sublayer (mtcli/model/residual.py says what each means).
# Defined here, in a module that does not import torch, for the schema, the model and `gradients`.
NORM_PLACEMENTS = ("post", "pre", "deepnorm", "none")


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, and so are nan and inf."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- data sources


class PairSource(Strict):
    """Two line-aligned text files (plain or .gz), one sentence a line."""

    type: Literal["pair"] = "pair"
    src: str
    tgt: str


class TsvSource(Strict):
    """A tab-separated file (plain or .gz); `columns` are the 0-based source and target columns."""

    type: Literal["tsv"] = "tsv"
    path: str
    columns: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = (0, 1)


class JsonlSource(Strict):
    """One JSON object a line; `keys` name the source and target fields (dotted for nesting)."""

    type: Literal["jsonl"] = "jsonl"
    path: str
    keys: tuple[str, str] = ("src", "tgt")


class HfSource(Strict):
    """A dataset read through `datasets.load_dataset` (hub name, or a builder such as `json`).

    Columns: either `translation` (a dict column keyed by language codes) or `columns` (two flat
    column names for source and target).
    """

    type: Literal["hf"] = "hf"
    name: str
    config: str | None = None
    split: str = "train"
    data_files: str | list[str] | None = None
    columns: tuple[str, str] | None = None
    translation: str | None = None


class HfDiskSource(Strict):
    """A dataset saved with `Dataset.save_to_disk` (or a `DatasetDict`, choose `split`)."""

    type: Literal["hf_disk"] = "hf_disk"
    path: str
    split: str | None = None
    columns: tuple[str, str] | None = None
    translation: str | None = None


Source = Annotated[
    PairSource | TsvSource | JsonlSource | HfSource | HfDiskSource,
    Field(discriminator="type"),
]


class FilterConfig(Strict):
    """Cleaning and filtering applied by `prepare` (each drop is counted by reason)."""

    max_chars: int = Field(1000, gt=0)
    max_tokens: int = Field(250, gt=0)
    max_ratio: float = Field(3.0, gt=1.0)
    ratio_min_tokens: int = Field(4, ge=1)
    dedup: bool = True
    remove_eval_overlap: bool = True


class DataConfig(Strict):
    """Languages, the train/valid/test sources, filters and split sizes."""

    src_lang: str
    tgt_lang: str
    train: Source
    valid: Source | None = None
    test: Source | None = None
    valid_size: int = Field(1000, ge=1)
    test_size: int = Field(1000, ge=0)
    max_train_pairs: int | None = Field(None, ge=1)
    split_seed: int = 1
    filters: FilterConfig = FilterConfig()
    # Fraction of train pairs whose two sides end in sentence punctuation that are also added with
    # it removed, so that unpunctuated input ("I love you") is in distribution (0 = off).
    strip_punct: float = Field(0.0, ge=0.0, le=1.0)


class TokenizerConfig(Strict):
    """SentencePiece settings."""

    type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = Field(8000, ge=16)
    joint: bool = True
    character_coverage: float = Field(1.0, gt=0.0, le=1.0)
    input_sentence_size: int = Field(2_000_000, ge=1000)


class ModelConfig(Strict):
    """Transformer shape; `norm` and `norm_type` choose the residual/normalization placement."""

    d_model: int = Field(256, ge=8)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(1024, ge=8)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu", "silu"] = "relu"  # silu = swish (Marian/OPUS-MT)
    norm: Literal[NORM_PLACEMENTS] = "pre"
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0.0)
    residual: bool = True
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(1024, ge=16)
    tie_embeddings: bool = True
    # A learned bias on the output logits (Marian's `final_logits_bias`; imported models).
    output_bias: bool = False

    @field_validator("n_heads")
    @classmethod
    def _heads_divide(cls, n_heads: int, info: Any) -> int:
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        return n_heads


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a string such as '90s', '30m', '2h'."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a number of seconds or a duration such as 90s, 30m or 2h")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return float(match.group(1)) * scale


class TrainConfig(Strict):
    """Batching, optimizer, schedule, limits, evaluation and checkpoint cadence."""

    max_tokens: int = Field(4096, ge=16)
    update_freq: int = Field(1, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(7e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["inverse_sqrt", "linear", "cosine", "constant"] = "inverse_sqrt"
    warmup_steps: int = Field(4000, ge=0)
    # The lr the warmup ramp starts from (fairseq's --warmup-init-lr); = lr: no ramp, but the decay
    # still counts from warmup_steps (the same schedule as a warmed-up run, without the warmup).
    warmup_init_lr: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    # Subword regularization (unigram tokenizer): each epoch, every training sentence takes one of
    # its `subword_nbest` best segmentations with probability ~ P^alpha (lower alpha: more varied);
    # 0 = off (the stored best segmentation). See mtcli/data/subword.py.
    subword_alpha: float = Field(0.0, ge=0.0)
    subword_nbest: int = Field(16, ge=2)
    clip_norm: float = Field(1.0, ge=0.0)
    max_steps: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    max_time: float | None = Field(None, gt=0.0)  # seconds (or '90s', '30m', '2h')
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(1000, ge=1)
    eval_bleu: bool = True
    eval_beam_size: int = Field(1, ge=1)
    eval_max_sentences: int | None = Field(None, ge=1)
    save_every: int = Field(1000, ge=1)
    keep_last: int = Field(5, ge=1)
    average_last: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1)
    # An evaluation improves on the best only by more than this (in the best metric's unit), so
    # `patience` can mean "stopped improving by more than patience_delta" (0: any improvement).
    patience_delta: float = Field(0.0, ge=0.0)
    best_metric: Literal["valid_loss", "valid_bleu", "valid_chrf"] = "valid_loss"
    grad_norm_every: int = Field(100, ge=1)
    max_bad_steps: int = Field(10, ge=1)
    seed: int = 1
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    compile: bool = False
    # Fine-tune: start from this bundle or checkpoint's weights, shape and tokenizer, with a fresh
    # optimizer, schedule and data position (mtcli/finetune.py).
    init_from: str | None = None

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return parse_duration(value)

    @model_validator(mode="after")
    def _schedule_is_consistent(self) -> TrainConfig:
        if self.schedule in ("linear", "cosine") and not (self.max_steps or self.max_time):
            raise ValueError(f"schedule {self.schedule} decays to zero at max_steps or max_time; set one")
        if self.warmup_init_lr > self.lr:
            raise ValueError(f"warmup_init_lr {self.warmup_init_lr:g} is above lr {self.lr:g}; the ramp rises to lr")
        return self


class DecodeConfig(Strict):
    """Search settings (beam, length penalty, max length = a * src_len + b)."""

    beam_size: int = Field(5, ge=1)
    nbest: int = Field(1, ge=1)
    length_penalty: float = Field(1.0, ge=0.0)
    max_len_a: float = Field(1.2, ge=0.0)
    max_len_b: int = Field(10, ge=1)
    min_len: int = Field(1, ge=0)
    # Source tokens per translation batch. Smaller batches were faster on a 2-core CPU (the
    # per-step (rows x vocabulary) tensors stay in cache): 67.9 / 62.8 / 52.3 sentences/s at
    # 2,000 / 4,000 / 8,000 in the same-work benchmark (docs/BENCHMARKS.md).
    max_tokens: int = Field(2000, ge=16)
    sampling: bool = False
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    int8: bool = False  # CPU only: int8 dynamic quantization of every projection (faster search)
    # bfloat16 GEMMs with float32 accumulation (CPU: AVX512-BF16 or AMX, else a warning and float32;
    # GPU: the whole model in bfloat16). Scores stay float32; a translation may change slightly.
    bf16: bool = False
    # CPU only: batches searched at once, each by its own thread with torch's threads split among
    # them; 0: 2 when torch has 2 or more threads (1.05-1.23x faster on 2 cores, same output), else 1.
    workers: int = Field(0, ge=0)
    # Text put before every source line, e.g. ">>fra<<" for a multi-target OPUS-MT model.
    src_prefix: str = ""


class Config(Strict):
    """A whole experiment."""

    name: str
    run_dir: str | None = None
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()

    @model_validator(mode="after")
    def _positions_hold_a_sentence(self) -> Config:
        # A train sentence of filters.max_tokens pieces plus EOS (source) or BOS (target) needs a
        # position each; one more would index past the position table mid-run.
        need = self.data.filters.max_tokens + 1
        if self.model.max_positions < need:
            raise ValueError(f"model.max_positions ({self.model.max_positions}) must be at least "
                             f"data.filters.max_tokens + 1 ({need})")  # fmt: skip
        return self

    @property
    def run_path(self) -> Path:
        """The run directory (default `runs/<name>`)."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise MtcliError(f"--set {text!r}: expected KEY=VALUE, e.g. --set model.norm=post")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise MtcliError(f"--set {text!r}: empty key")
    try:
        value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
    except MtcliError:
        if raw.lstrip()[:1] in "[{\"'":  # meant as a list, mapping or quoted string: say what is wrong
            raise
        value = raw  # a plain word YAML cannot read, e.g. >>fra<< (the shell ate its quotes)
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `--set` overrides to a raw config dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise MtcliError(f"--set {'.'.join(path)}: {where} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _expand(value: Any) -> Any:
    """Expand `${VAR}` in strings (MTCLI_DATA defaults to the shared corpora)."""
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, str) and "$" in value:
        env = dict(os.environ)
        env.setdefault("MTCLI_DATA", DEFAULT_DATA_ROOT)
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], m[0]), value)
    return value


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the file, the key path and what was expected."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).endswith("Source")]
    # A discriminated union adds the tag to the path (data.train.pair.src); drop it.
    if len(loc) > 2 and loc[0] == "data" and loc[2] in {"pair", "tsv", "jsonl", "hf", "hf_disk"}:
        loc.pop(2)
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        msg = f"expected {err['ctx']['expected']}, got {err.get('input')!r}"
    elif kind == "union_tag_invalid":
        msg = f"unknown source type; expected {err['ctx']['expected_tags']}"
    elif kind == "value_error" and isinstance(err.get("input"), dict):  # a check across a section's keys
        msg = err["msg"].removeprefix("Value error, ")
    else:
        msg = f"{err['msg'].removeprefix('Value error, ')}, got {err.get('input')!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not loc and kind == "value_error":  # a check across sections names its keys itself
        return f"{source}: {msg}{more}"
    return f"{source}: {key}: {msg}{more}"


def config_from_dict(raw: Any, source: str) -> Config:
    """Validate a raw mapping into a Config; errors name `source` and the key."""
    if not isinstance(raw, dict):
        raise MtcliError(f"{source}: expected a YAML mapping at the top level")
    try:
        return Config.model_validate(_expand(raw))
    except ValidationError as exc:
        raise MtcliError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `--set` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise MtcliError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MtcliError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    raw = load_yaml(text, str(path)) or {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path))


def to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
