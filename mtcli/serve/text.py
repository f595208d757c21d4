"""Texts in, sentences out and back: split a request's texts into sentences for the model and join
the translations with the original line structure and spacing.

Sentence boundaries come from sentencex (Wikimedia's rule-based segmenter, with abbreviation lists
for some 300 languages), not a home-made regex: "Dr. Smith" and "z.B." are not sentence ends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Piece:
    """A sentence to translate, or text kept as it is (blank lines), and the spacing after it."""

    text: str
    tail: str
    translate: bool


def split_text(text: str, lang: str) -> list[list[Piece]]:
    """A text's lines, each as its sentences (a blank line is one untranslated piece)."""
    from sentencex import segment

    lines = []
    for line in text.split("\n"):
        if not line.strip():
            lines.append([Piece(line, "", False)])
            continue
        head = line[: len(line) - len(line.lstrip())]
        pieces = [Piece(head, "", False)] if head else []
        for sentence in segment(lang, line.lstrip()):
            core = sentence.rstrip()
            pieces.append(Piece(core, sentence[len(core) :], True))
        lines.append(pieces)
    return lines


def sentences(structure: list[list[Piece]]) -> list[str]:
    """The pieces to translate, in order."""
    return [p.text for line in structure for p in line if p.translate]


def join_text(structure: list[list[Piece]], translations: list[str]) -> str:
    """The text again, each sentence replaced by its translation in order."""
    it = iter(translations)
    lines = ["".join((next(it) if p.translate else p.text) + p.tail for p in line) for line in structure]
    return "\n".join(lines)
