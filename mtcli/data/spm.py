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


ID_MAP = "spm.ids.json"  # an imported model's vocabulary: model ids that are not SentencePiece's
LANGUAGE_CODE = re.compile(r"^\s*(>>[^<>\s]+<<)\s*")  # Marian's target-language token: ">>fra<< text"


class MappedPieces:
    """A SentencePiece model whose pieces an imported model numbers its own way (`spm.ids.json`):
    what `prepare` encodes with when fine-tuning such a model. Same calls as a processor."""

    def __init__(self, processor, pieces: list[str], unk_id: int):
        self.processor, self.unk_id = processor, unk_id
        self.ids = {p: i for i, p in enumerate(pieces)}
        self.size = len(pieces)

    def get_piece_size(self) -> int:
        return self.size

    def encode(self, lines: list[str], out_type=int, num_threads: int = 1) -> list[list[int]]:
        pieces = self.processor.encode(lines, out_type=str, num_threads=num_threads)
        return [[self.ids.get(p, self.unk_id) for p in seq] for seq in pieces]


def read_id_map(folder: Path) -> dict | None:
    """The `spm.ids.json` of a folder (an imported model's numbering), or None."""
    import json

    path = Path(folder) / ID_MAP
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


class Tokenizer:
    """Encodes source text and decodes target ids with the run's SentencePiece model(s).

    `directory` holds `spm.model` (joint) or `spm.src.model` and `spm.tgt.model` (separate). An
    imported model's folder also holds `spm.ids.json` (`id_map`): its pieces in model-id order per
    side and its special ids, since its vocabulary numbers pieces differently from SentencePiece
    (Marian's `vocab.json`). Pieces are then looked up by string, unknown ones as `unk_id`, and a
    leading `>>xxx<<` language token is kept whole, as Marian's own tokenizer does.
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
        self._word_starts: set[int] | None = None
        self.id_map = read_id_map(directory)
        if self.id_map is not None:
            self._src_ids = {p: i for i, p in enumerate(self.id_map["src_pieces"])}
            self._tgt_pieces = self.id_map["tgt_pieces"]
            self.pad_id, self.unk_id = self.id_map["pad_id"], self.id_map["unk_id"]
            self.bos_id, self.eos_id = self.id_map["bos_id"], self.id_map["eos_id"]
            self._special = {self.pad_id, self.bos_id, self.eos_id}
        else:
            self.pad_id, self.unk_id = self.tgt.pad_id(), self.tgt.unk_id()
            self.bos_id, self.eos_id = self.tgt.bos_id(), self.tgt.eos_id()

    @property
    def src_vocab_size(self) -> int:
        return len(self.id_map["src_pieces"]) if self.id_map else self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return len(self._tgt_pieces) if self.id_map else self.tgt.get_piece_size()

    def src_word_starts(self) -> set[int]:
        """Source ids of the pieces that begin a word (SentencePiece's leading "\u2581"); computed once."""
        if self._word_starts is None:
            if self.id_map is not None:
                pieces = self.id_map["src_pieces"]
            else:
                pieces = [self.src.id_to_piece(i) for i in range(self.src.get_piece_size())]
            self._word_starts = {i for i, p in enumerate(pieces) if p.startswith("\u2581")}
        return self._word_starts

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Source sentences -> ids (no BOS/EOS)."""
        if self.id_map is None:
            return self.src.encode(lines)
        out = []
        for line in lines:
            code = LANGUAGE_CODE.match(line)
            head = [code.group(1)] if code else []
            pieces = head + self.src.encode(line[code.end():] if code else line, out_type=str)
            out.append([self._src_ids.get(p, self.unk_id) for p in pieces])
        return out

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target ids -> detokenized text (special ids dropped)."""
        if self.id_map is None:
            return self.tgt.decode(ids)
        pieces = self._tgt_pieces
        return [self.tgt.decode_pieces([pieces[i] for i in seq if i not in self._special]) for seq in ids]
