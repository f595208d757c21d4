"""SentencePiece tokenization for both sides (one joint model, or one per language)."""

from __future__ import annotations

from pathlib import Path


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

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        """Target sentences -> ids (no BOS/EOS)."""
        return self.tgt.encode(lines)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target ids -> detokenized text (special ids dropped)."""
        return self.tgt.decode(ids)
