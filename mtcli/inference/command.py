"""The `mtcli translate` command: arguments, a file or streamed standard input in; text or jsonl out.

Standard input is read as it arrives and answered chunk by chunk, so a long pipe streams out and
an interactive line is answered at once. One output line per input line; empty in, empty out.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.files import check_output, replace_file
from mtcli.inference.translator import load_translator

STDIN_CHUNK_LINES = 1000


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise MtcliError(f"{name}: line {lineno}: invalid UTF-8") from None


def read_chunks(fd: int, name: str, chunk_lines: int = STDIN_CHUNK_LINES) -> Iterator[list[str]]:
    """Lines from a file descriptor, yielded as soon as a read returns them (streaming)."""
    pending, lineno = b"", 0
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            break
        pending += data
        *complete, pending = pending.split(b"\n")
        for start in range(0, len(complete), chunk_lines):
            part = complete[start : start + chunk_lines]
            yield [_decode_line(raw, name, lineno + j + 1) for j, raw in enumerate(part)]
            lineno += len(part)
    if pending:
        yield [_decode_line(pending, name, lineno + 1)]


def _format(hyps: list[dict], source: str, fmt: str, index: int) -> str:
    if fmt == "jsonl":
        return json.dumps({"index": index, "source": source, "hypotheses": hyps}, ensure_ascii=False)
    if len(hyps) > 1:  # n-best in Moses format: index ||| text ||| score
        return "\n".join(f"{index} ||| {h['text']} ||| {h['score']}" for h in hyps)
    return hyps[0]["text"] if hyps else ""


def _input_chunks(text: list[str], input: Path | None) -> Iterator[list[str]]:
    if text:
        yield text
    elif input is not None and str(input) != "-":
        if not input.is_file():
            raise MtcliError(f"{input}: {'is a directory' if input.is_dir() else 'input file not found'}")
        with open(input, "rb") as f:
            yield from read_chunks(f.fileno(), str(input))
    else:
        yield from read_chunks(sys.stdin.fileno(), "stdin", chunk_lines=STDIN_CHUNK_LINES)


def run_translate(text, model, input, output, beam, nbest, fmt, overrides, int8=False, bf16=False) -> None:
    """The `mtcli translate` command."""
    if fmt not in ("text", "jsonl"):
        raise MtcliError(f"--format {fmt!r}: expected text or jsonl")
    if text and input is not None:
        raise MtcliError("give sentences as arguments or with -i FILE, not both")
    if output is not None:
        check_output(output, "--output")
    translator = load_translator(model, beam, nbest, overrides, int8=int8, bf16=bf16)
    with replace_file(output) if output is not None else contextlib.nullcontext(sys.stdout) as sink:
        index = 0
        for chunk in _input_chunks(text, input):
            results = translator.translate(chunk, first_line=index + 1)
            for line, hyps in zip(chunk, results):
                sink.write(_format(hyps, line, fmt, index) + "\n")
                index += 1
            sink.flush()
