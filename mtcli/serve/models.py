"""The models a server holds: bundles loaded in the background, one worker each, keyed by pair.

mtcli's own bundles, and their CTranslate2 exports, each serve the one pair their metadata
declares. Loading happens off the event loop so that /health can answer "loading" meanwhile; a
pool is ready once every model is loaded and has translated one warm-up sentence (the first
search pays one-off allocation costs).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mtcli.errors import MtcliError
from mtcli.serve.batcher import Batcher
from mtcli.serve.metrics import Metrics

# English names for /languages (LibreTranslate's `name`); other codes are shown as themselves.
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fi": "Finnish",
    "fr": "French", "it": "Italian", "ja": "Japanese", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip
WARMUP_TEXT = "Hello."


def model_pair(path: Path) -> tuple[str, str]:
    """The (source, target) languages a bundle's metadata, or a CTranslate2 export's info, declares."""
    from mtcli.inference.ct2 import INFO_FILE, is_ct2_export

    meta = json.loads((path / (INFO_FILE if is_ct2_export(path) else "metadata.json")).read_text())
    if not meta.get("src_lang") or not meta.get("tgt_lang"):
        raise MtcliError(f"{path}: the model does not say which languages it translates (src_lang, tgt_lang)")
    return meta["src_lang"], meta["tgt_lang"]


@dataclass
class Limits:
    """What the server allows a request (the CLI's serve options)."""

    api_keys: frozenset[str] = frozenset()
    char_limit: int = 5000  # per text, in characters; -1: none (LibreTranslate's meaning)
    batch_limit: int = 64  # texts in one request's q list; -1: none
    queue_size: int = 64  # requests waiting per model before 503
    timeout: float = 30.0  # seconds per request before 504
    max_body: int = 1 << 20  # bytes; larger bodies get 413
    max_beam: int = 8  # beam and n-best a request may ask for
    cors: tuple[str, ...] = ()
    batching: str = "continuous"  # or "pooled", or "off": one request per model call (see batcher.py)


@dataclass
class Served:
    """One loaded model: its pair, its Translator and its worker."""

    src: str
    tgt: str
    path: Path
    translator: object
    batcher: Batcher

    @property
    def pair(self) -> str:
        """`src-tgt`, the name metrics use."""
        return f"{self.src}-{self.tgt}"


@dataclass
class ModelPool:
    """The bundles to serve, loaded by `load` (a background thread in the server)."""

    paths: list[Path]
    overrides: list[str] = field(default_factory=list)
    models: dict[tuple[str, str], Served] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    settled: threading.Event = field(default_factory=threading.Event)  # loaded or failed
    error: str | None = None

    def load(self, metrics: Metrics, limits: Limits) -> None:
        """Load and warm every bundle, then mark the pool ready (or record the error)."""
        try:
            self._load_all(metrics, limits)
        finally:
            self.settled.set()

    def _load_all(self, metrics: Metrics, limits: Limits) -> None:
        from mtcli.inference.translator import load_translator

        try:
            for path in self.paths:
                translator = load_translator(path, overrides=self.overrides)  # checks the bundle
                src, tgt = model_pair(Path(path))
                if (src, tgt) in self.models:
                    raise MtcliError(f"{path}: {src}-{tgt} is served already by {self.models[src, tgt].path}")
                translator.translate([WARMUP_TEXT])
                batcher = Batcher(translator, f"{src}-{tgt}", metrics, limits.queue_size, batching=limits.batching)
                self.models[src, tgt] = Served(src, tgt, Path(path), translator, batcher)
        except MtcliError as exc:
            self.error = str(exc)  # run_serve reports it and exits 2
            return
        for served in self.models.values():
            served.batcher.start()
        self.ready.set()

    def stop(self) -> None:
        """Stop every worker and wait for it (after the server has finished its requests): a batch
        still running for a request that timed out must end before the interpreter does, or
        finalizing under a thread inside torch aborts the process."""
        for served in self.models.values():
            served.batcher.stop()
        for served in self.models.values():
            if served.batcher.thread.is_alive():
                served.batcher.thread.join()

    def sources(self) -> list[str]:
        """Source languages served, sorted."""
        return sorted({src for src, _ in self.models})

    def languages(self) -> list[dict]:
        """GET /languages in LibreTranslate's shape: code, name, targets (each source and target)."""
        codes = sorted({c for pair in self.models for c in pair})
        return [{"code": c, "name": LANGUAGE_NAMES.get(c, c),
                 "targets": sorted(t for s, t in self.models if s == c)} for c in codes]  # fmt: skip
