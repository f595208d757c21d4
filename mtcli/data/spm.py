"""SentencePiece, the one module: training the model(s) on the cleaned train split, loading them,
batch encoding for prepare, and the `Tokenizer` that train and translate use (joint or separate).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from mtcli.config import TokenizerConfig
from mtcli.data.manifest import SPECIAL
from mtcli.errors import MtcliError, RunFailure


def train_spm(
    sentences: Iterable[str], prefix: Path, tok: TokenizerConfig, seed: int, max_chars: int
) -> Path:
    """Train one SentencePiece model from an iterator of sentences; returns `prefix.model`.

    SentencePiece samples `tok.input_sentence_size` sentences (reservoir sampling, seeded) when
    there are more, so memory is bounded on big corpora. Ids follow mtcli.data.manifest.SPECIAL.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=str(prefix),
            model_type=tok.type,
            vocab_size=tok.vocab_size,
            character_coverage=tok.character_coverage,
            input_sentence_size=tok.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max(4192, 4 * max_chars),
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **SPECIAL,
        )
    except RuntimeError as exc:
        raise _spm_error(str(exc), tok) from None
    return Path(f"{prefix}.model")


def _spm_error(message: str, tok: TokenizerConfig) -> Exception:
    """SentencePiece's vocabulary-size failures as a user error that says what to set."""
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return MtcliError(
            f"tokenizer.vocab_size={tok.vocab_size} is larger than the training data supports; "
            f"set tokenizer.vocab_size to at most {too_high.group(2)} "
            f"(e.g. --set tokenizer.vocab_size={too_high.group(2)}) or add data"
        )
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        return MtcliError(
            f"tokenizer.vocab_size={tok.vocab_size} is smaller than the {too_low.group(2)} "
            f"characters to cover; raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        )
    return RunFailure(f"SentencePiece training failed: {message.strip().splitlines()[-1]}")


def load_spm(path: Path):
    """A SentencePieceProcessor for a trained model file."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def encoder(processor) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoding with every core (no BOS/EOS)."""
    threads = os.cpu_count() or 1
    return lambda lines: processor.encode(lines, out_type=int, num_threads=threads)


class Tokenizer:
    """Encodes source text and decodes target ids with the run's SentencePiece model(s).

    `directory` holds `spm.model` (joint) or `spm.src.model` and `spm.tgt.model` (separate).
    """

    def __init__(self, directory: Path):
        import sentencepiece as spm

        directory = Path(directory)
        joint = directory / "spm.model"
        src_path = joint if joint.exists() else directory / "spm.src.model"
        tgt_path = joint if joint.exists() else directory / "spm.tgt.model"
        self.joint = joint.exists()
        self.src = spm.SentencePieceProcessor(model_file=str(src_path))
        self.tgt = self.src if self.joint else spm.SentencePieceProcessor(model_file=str(tgt_path))
        self.pad_id, self.unk_id = self.tgt.pad_id(), self.tgt.unk_id()
        self.bos_id, self.eos_id = self.tgt.bos_id(), self.tgt.eos_id()

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Source sentences -> ids (no BOS/EOS)."""
        return self.src.encode(lines)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target ids -> detokenized text (special ids dropped)."""
        return self.tgt.decode(ids)
