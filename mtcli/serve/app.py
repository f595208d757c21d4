"""The ASGI app: LibreTranslate's /translate and /languages, mtcli's /v1/translate, /health,
/metrics and the page at /. Routes parse and check requests and await the models' workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtcli.serve.batcher import QueueFull
from mtcli.serve.bodies import HTTPError, TranslateRequest, V1Request, read_fields, validate
from mtcli.serve.metrics import Metrics
from mtcli.serve.models import Limits, ModelPool, Served
from mtcli.serve.text import join_text, sentences, split_text

ROUTES = ("/", "/translate", "/languages", "/v1/translate", "/health", "/metrics")


def create_app(pool: ModelPool, limits: Limits, metrics: Metrics | None = None) -> FastAPI:
    """The server app; models load in a background thread when it starts (see /health)."""
    metrics = metrics or Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=pool.load, args=(metrics, limits), name="mtcli-loader", daemon=True)
        if not pool.ready.is_set():
            loader.start()
        app.state.loop_thread = threading.current_thread().name
        yield
        # A model still loading or translating must finish before the interpreter exits.
        await asyncio.to_thread(lambda: (loader.is_alive() and loader.join(), pool.stop()))

    app = FastAPI(title="mtcli serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.limits, app.state.metrics = pool, limits, metrics
    _add_error_handlers(app)
    _add_routes(app)
    if limits.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(limits.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])  # fmt: skip
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class MetricsMiddleware:
    """Counts every HTTP request by route and status, and times it (pure ASGI: sees disconnects)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.observe(route, status[0], time.perf_counter() - start)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPError)
    async def http_error(request, exc: HTTPError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return _error(500, f"Cannot translate text: {type(exc).__name__}: {exc}")


def _add_routes(app: FastAPI) -> None:
    pool: ModelPool = app.state.pool
    limits: Limits = app.state.limits

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(files("mtcli.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        if not pool.ready.is_set():
            status = "failed" if pool.error else "loading"
            return JSONResponse({"status": status, "error": pool.error}, status_code=503)
        models = [{"pair": s.pair, "path": str(s.path.name), "worker_thread": s.batcher.thread.name}
                  for s in pool.models.values()]  # fmt: skip
        return {"status": "ok", "models": models, "event_loop_thread": app.state.loop_thread}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/languages")
    async def languages():
        _check_ready(pool)
        return pool.languages()

    @app.post("/translate")
    async def translate(request: Request):
        fields = await _checked_fields(request, pool, limits)
        return await _libretranslate(validate(TranslateRequest, fields), request, pool, limits)

    @app.post("/v1/translate")
    async def translate_v1(request: Request):
        fields = await _checked_fields(request, pool, limits)
        return await _v1(validate(V1Request, fields), request, pool, limits)


async def _checked_fields(request: Request, pool: ModelPool, limits: Limits) -> dict:
    """The body's fields, once the models are ready and the API key (if keys are set) is valid."""
    _check_ready(pool)
    fields = await read_fields(request, limits.max_body)
    if limits.api_keys:
        key = fields.get("api_key")
        if not key:
            raise HTTPError(400, "Please contact the server operator to get an API key")
        if key not in limits.api_keys:
            raise HTTPError(403, "Invalid API key")
    return fields


def _check_ready(pool: ModelPool) -> None:
    if not pool.ready.is_set():
        raise HTTPError(503, "the models are still loading; see /health", {"Retry-After": "1"})


def _model(pool: ModelPool, source: str | None, target: str | None) -> Served:
    """The model for a pair; `auto` (or no source) is the only source served, if there is one."""
    if source in (None, "auto"):
        if len(pool.sources()) != 1:
            raise HTTPError(400, f"source auto: several source languages are served ({', '.join(pool.sources())}); name one")
        source = pool.sources()[0]
    if target is None:
        targets = [t for s, t in pool.models if s == source]
        target = targets[0] if len(targets) == 1 else "(none given)"
    if (source, target) in pool.models:
        return pool.models[source, target]
    known = {c for pair in pool.models for c in pair}
    for code in (source, target):
        if code not in known:
            raise HTTPError(400, f"{code} is not supported")
    raise HTTPError(400, f"{target} is not available as a target language from {source}")


def _check_texts(texts: list[str], limits: Limits) -> None:
    if not texts or not any(t.strip() for t in texts):
        raise HTTPError(400, "Invalid request: missing q parameter")
    if limits.batch_limit != -1 and len(texts) > limits.batch_limit:
        raise HTTPError(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({limits.batch_limit})")
    for text in texts:
        if limits.char_limit != -1 and len(text) > limits.char_limit:
            raise HTTPError(400, f"Invalid request: request ({len(text)}) exceeds text limit ({limits.char_limit})")


async def _libretranslate(req: TranslateRequest, request: Request, pool: ModelPool, limits: Limits):
    """LibreTranslate's answer: translatedText (a list for a list), alternatives when asked."""
    texts = req.q if isinstance(req.q, list) else [req.q]
    _check_texts(texts, limits)
    served = _model(pool, req.source, req.target)
    if (req.format or "text") != "text":
        raise HTTPError(400, f"{req.format} format is not supported: mtcli serve translates plain text (format text)")
    if not 0 <= req.alternatives < limits.max_beam:
        raise HTTPError(400, f"Invalid request: alternatives parameter must be <= {limits.max_beam - 1}")
    n = req.alternatives + 1
    structures = [split_text(t, served.src) for t in texts]
    flat = [s for st in structures for s in sentences(st)]
    beam = max(served.translator.params.beam_size, n)
    hyps = await _translate(served, flat, beam, n, request, limits)
    best, alts, start = [], [], 0
    for st in structures:
        mine = hyps[start : start + len(sentences(st))]
        start += len(mine)
        text = join_text(st, [h[0]["text"] if h else "" for h in mine])
        options = [join_text(st, [h[min(i, len(h) - 1)]["text"] if h else "" for h in mine]) for i in range(1, n)]
        best.append(text)
        alts.append(list(dict.fromkeys(o for o in options if o != text)))
    one = not isinstance(req.q, list)
    result: dict = {"translatedText": best[0] if one else best}
    if req.source == "auto":
        detected = {"confidence": 100.0, "language": served.src}
        result["detectedLanguage"] = detected if one else [detected] * len(texts)
    if req.alternatives > 0:
        result["alternatives"] = alts[0] if one else alts
    return result


async def _v1(req: V1Request, request: Request, pool: ModelPool, limits: Limits):
    """mtcli's answer: for each line, the object `mtcli translate --format jsonl` prints."""
    _check_texts(req.lines, limits)
    served = _model(pool, req.source, req.target)
    params = served.translator.params
    beam = req.beam or params.beam_size
    nbest = min(req.nbest or params.nbest, beam)
    if beam > limits.max_beam:
        raise HTTPError(400, f"Invalid request: beam must be <= {limits.max_beam}")
    hyps = await _translate(served, req.lines, beam, nbest, request, limits)
    results = [{"index": i, "source": line, "hypotheses": h} for i, (line, h) in enumerate(zip(req.lines, hyps))]
    return {"model": served.pair, "results": results}


async def _translate(served: Served, lines: list[str], beam: int, nbest: int, request: Request, limits: Limits):
    """Hypotheses for lines from the model's worker, within the time limit; a client that goes away
    takes its lines out of the queue."""
    if not lines:
        return []
    try:
        job = served.batcher.submit(lines, beam, nbest)
    except QueueFull:
        raise HTTPError(503, "Slowdown: the translation queue is full; retry later", {"Retry-After": "1"}) from None
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job.future, gone}, timeout=limits.timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.future in done:
        return job.future.result()
    served.batcher.cancel(job, "disconnect" if gone in done else "timeout")
    job.future.cancel()
    if gone in done:
        raise HTTPError(499, "the client closed the request")  # nobody reads it; uvicorn drops it
    raise HTTPError(504, f"translation took longer than the server's limit of {limits.timeout:g} s")


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
