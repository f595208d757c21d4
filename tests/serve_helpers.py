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
