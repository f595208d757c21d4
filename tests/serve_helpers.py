"""A real `mtcli serve` process on 127.0.0.1 and small HTTP helpers for the serve tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from run_helpers import REPO, TINY, cli

START_LIMIT_S = 180  # a bound on waiting for a loading server, not a speed assertion


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, data_dir) -> Path:
    """A tiny model trained for a few steps (poor but deterministic translations), once per session
    even though two test modules import this fixture."""
    run = tmp_path_factory.getbasetemp() / "serve-bundle" / "tiny"
    if not (run / "model" / "metadata.json").is_file():
        out = cli("train", str(TINY), "--set", f"run_dir={run}", "--set", "train.max_steps=30",
                  "--set", "train.eval_every=1000", "--set", "train.threads=1")  # fmt: skip
        assert out.returncode == 0, out.stderr
    return run / "model"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mtcli serve` as a subprocess; `start` waits until /health says ready."""

    def __init__(self, bundle: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mtcli", "serve", "-m", str(bundle), "--port", str(self.port), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def start(self) -> Server:
        """Wait for /health 200; fail with the server's stderr if it exits or never gets ready."""
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            try:
                if get(self.url + "/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not get ready")

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series in /metrics (0 when absent)."""
        return metric(get(self.url + "/metrics")[2], name, **labels)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the series `name` whose labels include `labels`, from Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def request(url: str, body: bytes | None = None, ctype: str | None = None, method: str | None = None,
            headers: dict | None = None):  # fmt: skip
    """(status, headers, text) of one HTTP request; error statuses are returned, not raised."""
    hdrs = {**({"Content-Type": ctype} if ctype else {}), **(headers or {})}
    req = urllib.request.Request(url, data=body, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def get(url: str):
    """GET url: (status, headers, text)."""
    return request(url)


def post_json(url: str, obj) -> tuple[int, dict]:
    """POST a JSON body: (status, parsed answer)."""
    status, _, text = request(url, json.dumps(obj).encode(), "application/json")
    return status, json.loads(text)


class HeldServer:
    """The serve app with uvicorn in a thread of this process, over real HTTP on 127.0.0.1, whose
    model workers can be held: `hold()` makes the next model call wait in the worker (counted as in
    progress) until `release()`. Tests of timeouts and disconnects then do not depend on how fast
    this machine translates. `limits` are fields of mtcli.serve.models.Limits."""

    def __init__(self, bundle: Path, **limits):
        import threading

        import uvicorn

        from mtcli.serve.app import create_app
        from mtcli.serve.models import Limits, ModelPool

        self.pool = ModelPool([bundle])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gate = threading.Event()
        self.gate.set()
        config = uvicorn.Config(create_app(self.pool, Limits(**limits)), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> HeldServer:
        self.thread.start()
        if not self.pool.ready.wait(START_LIMIT_S):
            raise AssertionError(f"models did not load: {self.pool.error}")
        for served in self.pool.models.values():
            self._gate(served.batcher)
        for _ in range(START_LIMIT_S * 10):
            if self.server.started:
                return self
            time.sleep(0.1)
        raise AssertionError("server did not start")

    def _gate(self, batcher) -> None:
        call, gate = batcher._call, self.gate

        def held(fn):
            assert gate.wait(START_LIMIT_S), "the test never released the worker"
            return call(fn)

        batcher._call = held

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "server thread did not stop"

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series in /metrics (0 when absent)."""
        return metric(get(self.url + "/metrics")[2], name, **labels)
