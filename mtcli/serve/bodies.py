"""Request bodies: read within the size limit, JSON or form-encoded, validated by pydantic models.

Every way a body can be wrong (too large, not UTF-8, not JSON, wrong field types) becomes an
HTTPError with LibreTranslate's status code and an `{"error": ...}` message, never a 500.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class HTTPError(Exception):
    """An error answer: status, one-line message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class TranslateRequest(BaseModel):
    """LibreTranslate's POST /translate (its field names; `alternatives` may be a numeric string)."""

    model_config = ConfigDict(extra="ignore")  # LibreTranslate ignores fields it does not know
    q: str | list[str]
    source: str
    target: str
    format: str | None = None
    alternatives: int = 0
    api_key: str | None = None


class V1Request(BaseModel):
    """mtcli's POST /v1/translate: lines in, `translate --format jsonl` objects out."""

    model_config = ConfigDict(extra="forbid")
    lines: list[str] = Field(min_length=1)
    source: str | None = None  # optional while one model is served
    target: str | None = None
    beam: int | None = Field(None, ge=1)
    nbest: int | None = Field(None, ge=1)
    api_key: str | None = None


async def read_body(request, max_body: int) -> bytes:
    """The raw body, refused with 413 past max_body bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise HTTPError(413, f"request body too large: {declared} bytes (limit {max_body})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise HTTPError(413, f"request body too large (limit {max_body} bytes)")
    return bytes(body)


async def read_fields(request, max_body: int) -> dict:
    """The body's fields: a JSON object, or a urlencoded or multipart form (as LibreTranslate)."""
    body = await read_body(request, max_body)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            return await _multipart(request, body)
        if kind == "application/x-www-form-urlencoded":
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
        if kind in ("application/json", "") or kind.endswith("+json"):
            fields = json.loads(body.decode("utf-8")) if body.strip() else {}
        else:
            raise HTTPError(415, f"unsupported content type {kind!r}: send JSON or a form")
    except UnicodeDecodeError:
        raise HTTPError(400, "Invalid request: the body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"Invalid JSON format: {exc}") from None
    if not isinstance(fields, dict):
        raise HTTPError(400, "Invalid JSON format: expected an object")
    return fields


async def _multipart(request, body: bytes) -> dict:
    """A multipart form, parsed by Starlette (python-multipart) from the body already read."""
    from starlette.requests import Request

    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception as exc:  # python-multipart's errors have no common base worth naming
        raise HTTPError(400, f"Invalid request: malformed form body ({exc})") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def validate(model: type[BaseModel], fields: dict) -> BaseModel:
    """The fields as `model`, or a 400 naming the first bad field in LibreTranslate's words."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "body"
        if err["type"] == "missing":
            raise HTTPError(400, f"Invalid request: missing {name} parameter") from None
        raise HTTPError(400, f"Invalid request: {name}: {err['msg']}") from None
