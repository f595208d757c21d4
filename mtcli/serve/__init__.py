"""`mtcli serve`: an HTTP server for model bundles (LibreTranslate's API, /v1/translate, /health,
/metrics and a page at /), pooling concurrent requests into batches (see batcher.py).

FastAPI and uvicorn are the `serve` extra; they are imported only when the command runs.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from mtcli.errors import MtcliError


def run_serve(models: list[Path], host: str, port: int, overrides: list[str], **limits) -> None:
    """Serve the bundles until SIGTERM or Ctrl-C (finishing the requests in flight), then return;
    `limits` are the fields of models.Limits."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import sentencex  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MtcliError(f"mtcli serve needs the serve extra ({exc.name} is missing): pip install 'mtcli[serve]'") from None
    from mtcli.inference.translator import resolve_model_path
    from mtcli.serve.app import create_app
    from mtcli.serve.batcher import check_batching
    from mtcli.serve.models import Limits, ModelPool

    bad = [o for o in overrides if not o.startswith("decode.")]
    if bad:
        raise MtcliError(f"--set {bad[0]}: serve only accepts decode.* keys")
    check_batching(limits.get("batching", "continuous"))
    pool = ModelPool([Path(m) for m in models] or [resolve_model_path(None)], list(overrides))
    config = uvicorn.Config(create_app(pool, Limits(**limits)), host=host, port=port, access_log=False,
                            log_level="warning", timeout_graceful_shutdown=None)  # fmt: skip
    server = uvicorn.Server(config)
    threading.Thread(target=_announce, args=(pool, server, host, port), daemon=True).start()
    # uvicorn re-raises the signal it stopped on once it has shut down gracefully; a handler of
    # our own receives it, so a drained SIGTERM ends the process with exit status 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if pool.error:
        raise MtcliError(pool.error)


def _announce(pool, server, host: str, port: int) -> None:
    """Say when the server is ready, or stop it if a model failed to load."""
    pool.settled.wait()
    if pool.error:
        server.should_exit = True
        return
    pairs = ", ".join(s.pair for s in pool.models.values())
    print(f"serving {pairs} at http://{host}:{port}/ (ready)", file=sys.stderr, flush=True)
