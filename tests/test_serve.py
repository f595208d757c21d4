"""`mtcli serve` over real HTTP on 127.0.0.1: a real server process with a tiny bundle trained here."""

from __future__ import annotations

import ctypes
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from run_helpers import REPO, cli
from serve_helpers import HeldServer, Server, bundle, get, metric, post_json, request

from mtcli.serve.heap import HeapTrim, heap_bytes

pytest.importorskip("fastapi")
__all__ = ["bundle"]  # the fixture, imported
SENTENCES = ["A dog runs in the park.", "Two men are talking on the street.", "A woman is reading a book.",
             "A child plays with a red ball.", "People are walking.", "A black cat sleeps."]  # fmt: skip
BIG = " ".join(["a man in a blue shirt is walking down the street with his dog"] * 3)


@pytest.fixture(scope="module")
def server(bundle):
    """A server with the default limits."""
    srv = Server(bundle).start()
    yield srv
    assert srv.stop() == 0


def offline(bundle: Path, lines: list[str], beam: int | None = None, nbest: int | None = None) -> list[list[dict]]:
    """The hypotheses `mtcli translate` gives for these lines (its Translator, in this process)."""
    from mtcli.inference.translator import load_translator

    return load_translator(bundle, beam, nbest, device="cpu").translate(lines)


def offline_cli(bundle: Path, lines: list[str], *args: str) -> list[dict]:
    """What `mtcli translate --format jsonl` prints for these lines."""
    out = subprocess.run([sys.executable, "-m", "mtcli", "translate", "-m", str(bundle), "--format", "jsonl", *args],
                         input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def same_results(served: list[dict], cli_out: list[dict]) -> bool:
    """The same hypotheses (text, tokens) in the same order, and the same scores within 2 units of the last
    printed digit: the server batches the lines otherwise than the CLI, and on some CPUs (AVX-512,
    AMX) another batch shape sums in another order, which moves a score's 4th decimal."""
    def key(results):  # every field but the scores
        return [{**r, "hypotheses": [{k: v for k, v in h.items() if k not in ("score", "logprob")}
                                     for h in r["hypotheses"]]} for r in results]  # fmt: skip

    def scores(results):
        return [v for r in results for h in r["hypotheses"] for v in (h["score"], h["logprob"])]

    return key(served) == key(cli_out) and scores(served) == pytest.approx(scores(cli_out), abs=2e-4)


def test_health_languages_and_page(server):
    status, _, text = get(server.url + "/health")
    health = json.loads(text)
    assert status == 200 and health["status"] == "ok" and health["models"][0]["pair"] == "en-de"
    status, _, text = get(server.url + "/languages")
    assert status == 200 and json.loads(text) == [{"code": "de", "name": "German", "targets": []},
                                                  {"code": "en", "name": "English", "targets": ["de"]}]  # fmt: skip
    status, headers, text = get(server.url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and 'id="source"' in text


def test_v1_returns_the_objects_of_translate_jsonl(server, bundle):
    status, body = post_json(server.url + "/v1/translate", {"lines": SENTENCES, "beam": 3, "nbest": 2})
    assert status == 200 and same_results(body["results"], offline_cli(bundle, SENTENCES, "--beam", "3", "--nbest", "2"))
    status, body = post_json(server.url + "/v1/translate", {"lines": ["x"], "beam": 99})
    assert status == 400 and "beam" in body["error"]


def test_libretranslate_json_form_multipart_and_lists(server, bundle):
    best = [h[0]["text"] for h in offline(bundle, SENTENCES[:2])]
    url = server.url + "/translate"
    assert post_json(url, {"q": SENTENCES[0], "source": "en", "target": "de"}) == (200, {"translatedText": best[0]})
    status, body = post_json(url, {"q": SENTENCES[:2], "source": "auto", "target": "de"})
    assert status == 200 and body["translatedText"] == best
    assert body["detectedLanguage"] == [{"confidence": 100.0, "language": "en"}] * 2
    from urllib.parse import urlencode

    form = urlencode({"q": SENTENCES[0], "source": "en", "target": "de", "format": "text"}).encode()
    status, _, text = request(url, form, "application/x-www-form-urlencoded")
    assert (status, json.loads(text)) == (200, {"translatedText": best[0]})
    multipart = (b'--XyZ\r\nContent-Disposition: form-data; name="q"\r\n\r\n' + SENTENCES[0].encode()
                 + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="source"\r\n\r\nen'
                 b'\r\n--XyZ\r\nContent-Disposition: form-data; name="target"\r\n\r\nde\r\n--XyZ--\r\n')  # fmt: skip
    status, _, text = request(url, multipart, "multipart/form-data; boundary=XyZ")
    assert (status, json.loads(text)) == (200, {"translatedText": best[0]})


def test_sentences_and_lines_are_split_and_joined(server, bundle):
    text = f"{SENTENCES[0]} {SENTENCES[1]}\n\n{SENTENCES[2]}"
    best = [h[0]["text"] for h in offline(bundle, SENTENCES[:3])]
    status, body = post_json(server.url + "/translate", {"q": text, "source": "en", "target": "de"})
    assert status == 200 and body["translatedText"] == f"{best[0]} {best[1]}\n\n{best[2]}"


def test_alternatives_are_the_nbest_list(server, bundle):
    nbest = [h["text"] for h in offline(bundle, SENTENCES[:1], beam=3, nbest=3)[0]]
    status, body = post_json(server.url + "/translate", {"q": SENTENCES[0], "source": "en", "target": "de",
                                                         "alternatives": 2})  # fmt: skip
    assert status == 200 and body["translatedText"] == nbest[0]
    assert body["alternatives"] == [t for t in dict.fromkeys(nbest[1:]) if t != nbest[0]]
    status, body = post_json(server.url + "/translate", {"q": [SENTENCES[0]], "source": "en", "target": "de",
                                                         "alternatives": "2"})  # fmt: skip
    assert status == 200 and isinstance(body["alternatives"][0], list)


def test_an_existing_libretranslate_client_works(server, bundle):
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(server.url)
    best = offline(bundle, SENTENCES[:1])[0][0]["text"]
    assert client.translate(SENTENCES[0], "en", "de") == best
    assert [lang["code"] for lang in client.languages()] == ["de", "en"]


BAD_REQUESTS = [
    (b'{"q": "x", "source": "en"', "application/json", 400, "Invalid JSON"),
    (b'["x"]', "application/json", 400, "Invalid JSON"),
    (b'{"q": 5, "source": "en", "target": "de"}', "application/json", 400, "q"),
    (b'{"q": [1, 2], "source": "en", "target": "de"}', "application/json", 400, "q"),
    (b'{"source": "en", "target": "de"}', "application/json", 400, "missing q parameter"),
    (b'{"q": "", "source": "en", "target": "de"}', "application/json", 400, "missing q parameter"),
    (b'{"q": [], "source": "en", "target": "de"}', "application/json", 400, "missing q parameter"),
    (b'{"q": "x", "target": "de"}', "application/json", 400, "missing source parameter"),
    (b'{"q": "x", "source": "en", "target": "fr"}', "application/json", 400, "fr is not supported"),
    (b'{"q": "x", "source": "de", "target": "en"}', "application/json", 400, "not available"),
    (b'{"q": "x", "source": "en", "target": "de", "format": "html"}', "application/json", 400, "html"),
    (b'{"q": "x", "source": "en", "target": "de", "alternatives": "many"}', "application/json", 400, "alternatives"),
    (b'{"q": "x", "source": "en", "target": "de", "alternatives": 50}', "application/json", 400, "alternatives"),
    (b'{"q": "\xff\xfe", "source": "en", "target": "de"}', "application/json", 400, "UTF-8"),
    (b"q=%FF%FE&source=en&target=de", "application/x-www-form-urlencoded", 400, "UTF-8"),
    (b"--b\r\nbroken", "multipart/form-data; boundary=b", 400, "missing q parameter"),
    (b"q=x", "text/plain", 415, "content type"),
    (json.dumps({"q": "a " * 3000, "source": "en", "target": "de"}).encode(), "application/json", 400, "exceeds text limit"),
    (json.dumps({"q": ["a"] * 65, "source": "en", "target": "de"}).encode(), "application/json", 400, "exceeds text limit"),
]  # fmt: skip


def _over_limit(port: int, chunked: bool) -> tuple[int, str]:
    """POST a body over the 1 MiB limit: declared in Content-Length (only headers are sent, as the
    server answers before reading), or streamed in chunks without a length."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    if chunked:
        chunks = (b"a" * (1 << 16) for _ in range(17))  # 1.06 MiB: the last chunk crosses the limit
        conn.request("POST", "/translate", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
    else:
        conn.putrequest("POST", "/translate")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()
    answer = conn.getresponse()
    return answer.status, json.loads(answer.read())["error"]


def test_bad_requests_get_4xx_errors_and_the_server_keeps_serving(server):
    for body, ctype, status, words in BAD_REQUESTS:
        got, _, text = request(server.url + "/translate", body, ctype)
        assert (got, words in json.loads(text)["error"]) == (status, True), (body[:60], text)
    for chunked in (False, True):
        status, error = _over_limit(server.port, chunked)
        assert status == 413 and "too large" in error
    assert json.loads(request(server.url + "/v1/translate", b'{"lines": "x"}', "application/json")[2])["error"]
    assert request(server.url + "/translate", method="GET")[0] == 405
    status, _, text = get(server.url + "/nowhere")
    assert status == 404 and "error" in json.loads(text)
    assert server.metric("mtcli_serve_requests_total", status="500") == 0
    assert post_json(server.url + "/translate", {"q": "A dog.", "source": "en", "target": "de"})[0] == 200


def test_concurrent_requests_are_pooled_on_the_worker_thread(server, bundle):
    _check_pooling(server, bundle)


def test_pooled_batching_also_pools_and_matches_offline(bundle):
    with HeldServer(bundle, batching="pooled") as srv:
        assert not srv.pool.models["en", "de"].batcher.streaming  # whole calls, not the running batch
        _check_pooling(srv, bundle)


def _check_pooling(server, bundle) -> None:
    """N concurrent one-line requests: some model call holds several requests' sentences, it runs
    on the worker thread, and every request gets the translation `mtcli translate` gives."""
    expected = offline(bundle, SENTENCES)
    barrier = threading.Barrier(len(SENTENCES))

    def one(i: int):
        barrier.wait()
        return post_json(server.url + "/v1/translate", {"lines": [SENTENCES[i]]})

    def calls() -> tuple[float, float]:  # model calls (decoding steps), and those with one request
        return (server.metric("mtcli_serve_batch_requests_count"),
                server.metric("mtcli_serve_batch_requests_bucket", le="1.0"))  # fmt: skip

    before, sentences = calls(), server.metric("mtcli_serve_sentences_total")
    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        answers = list(pool.map(one, range(len(SENTENCES))))
    for i, (status, body) in enumerate(answers):
        assert status == 200 and body["results"][0]["hypotheses"] == expected[i]
    after = calls()
    assert after[0] - before[0] > after[1] - before[1]  # some model call held 2+ requests' sentences
    assert server.metric("mtcli_serve_sentences_total") - sentences == len(SENTENCES)
    health = json.loads(get(server.url + "/health")[2])
    text = get(server.url + "/metrics")[2]
    worker = health["models"][0]["worker_thread"]
    assert worker != health["event_loop_thread"]
    assert metric(text, "mtcli_serve_batches_total") == metric(text, "mtcli_serve_batches_total", thread=worker)
    if heap_bytes() is not None:  # glibc: the C heap holds at least the model's weights
        assert metric(text, "mtcli_serve_heap_bytes", kind="in_use") > bundle_bytes(bundle)


def bundle_bytes(bundle: Path) -> int:
    return sum(f.stat().st_size for f in bundle.iterdir())


def test_the_heap_gauge_counts_memory_and_the_idle_trim_gives_it_back():
    """64 MiB malloc'ed in 8 KiB blocks shows in heap_bytes; once freed (with every 16th block kept,
    so the heap cannot shrink from its top by itself) it stays resident until HeapTrim trims."""
    if heap_bytes() is None:
        pytest.skip("not glibc")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    before = heap_bytes()["in_use"]
    blocks = [libc.malloc(8192) for _ in range(8192)]
    for block in blocks:
        libc.memset(block, 1, 8192)  # resident
    assert heap_bytes()["in_use"] - before >= 60 << 20
    for i, block in enumerate(blocks):
        if i % 16:
            libc.free(block)
    trim = HeapTrim(every=3600)
    trim.maybe()  # busy, and the last trim was just now: nothing happens yet
    resident = rss_bytes()
    assert heap_bytes()["free"] >= 50 << 20
    trim.idle()
    assert resident - rss_bytes() >= 40 << 20
    for block in blocks[::16]:
        libc.free(block)


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024


def _start_big(url: str, results: list) -> threading.Thread:
    """A slow request (64 long lines, beam 8) in a thread; its (status, body) lands in results."""
    lines = [f"{BIG} {i}" for i in range(64)]
    thread = threading.Thread(target=lambda: results.append(post_json(url + "/v1/translate", {"lines": lines, "beam": 8})))
    thread.start()
    return thread


def _wait_for(srv: Server, name: str, value: float, **labels: str) -> None:
    """Poll /metrics until the series reaches value (bounded)."""
    for _ in range(600):
        if srv.metric(name, **labels) >= value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}")


def test_a_client_that_disconnects_leaves_the_queue(bundle):
    with HeldServer(bundle) as srv:
        srv.hold()  # the worker holds the first request until the second has left the queue
        results: list = []
        big = _start_big(srv.url, results)
        _wait_for(srv, "mtcli_serve_sentences_in_progress", 1)
        body = json.dumps({"lines": ["A dog.", "A cat.", "A bird."]}).encode()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            _wait_for(srv, "mtcli_serve_queue_depth", 1)
        _wait_for(srv, "mtcli_serve_cancelled_total", 1, reason="disconnect")
        assert srv.metric("mtcli_serve_queue_depth") == 0
        srv.release()
        big.join()
        assert results[0][0] == 200 and len(results[0][1]["results"]) == 64
        assert srv.metric("mtcli_serve_sentences_total") == 64  # the 3 lines never ran


def test_queue_full_is_503_and_timeout_is_504(bundle):
    with HeldServer(bundle, queue_size=1, timeout=0.5) as srv:
        srv.hold()  # the first request runs until both have timed out
        results: list = []
        big = _start_big(srv.url, results)
        _wait_for(srv, "mtcli_serve_sentences_in_progress", 1)
        waiting = threading.Thread(target=lambda: results.append(post_json(srv.url + "/v1/translate", {"lines": ["A dog."]})))
        waiting.start()
        _wait_for(srv, "mtcli_serve_queue_depth", 1)
        status, headers, text = request(srv.url + "/translate", b'{"q": "x", "source": "en", "target": "de"}',
                                        "application/json")  # fmt: skip
        assert status == 503 and headers["Retry-After"] == "1" and "queue is full" in json.loads(text)["error"]
        big.join()
        waiting.join()
        assert sorted(status for status, _ in results) == [504, 504]
        assert "longer than the server's limit of 0.5 s" in results[0][1]["error"]
        assert srv.metric("mtcli_serve_cancelled_total", reason="timeout") == 1  # the queued one left the queue
        assert srv.metric("mtcli_serve_queue_depth") == 0
        srv.release()  # the running batch ends; its results go nowhere and the worker serves on
        _wait_for(srv, "mtcli_serve_sentences_total", 64)  # the timed-out batch ran to its end
        assert srv.metric("mtcli_serve_sentences_in_progress") == 0 and srv.metric("mtcli_serve_sentences_total") == 64


def test_api_keys_cors_and_limits(bundle):
    srv = Server(bundle, "--api-key", "k1", "--api-key", "k2", "--cors", "https://app.example", "--char-limit", "40",
                 "--batch-limit", "2").start()  # fmt: skip
    try:
        url, ask = srv.url + "/translate", {"q": "A dog.", "source": "en", "target": "de"}
        assert post_json(url, ask)[0] == 400
        assert post_json(url, {**ask, "api_key": "nope"}) == (403, {"error": "Invalid API key"})
        assert post_json(url, {**ask, "api_key": "k2"})[0] == 200
        assert post_json(srv.url + "/v1/translate", {"lines": ["A dog."]})[0] == 400
        assert "exceeds text limit (40)" in post_json(url, {**ask, "q": "a" * 41, "api_key": "k1"})[1]["error"]
        assert "exceeds text limit (2)" in post_json(url, {**ask, "q": ["a"] * 3, "api_key": "k1"})[1]["error"]
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        _, headers, _ = request(url, method="OPTIONS", headers=preflight)
        assert headers["access-control-allow-origin"] == "https://app.example"
        _, headers, _ = request(url, method="OPTIONS", headers={**preflight, "Origin": "https://evil.example"})
        assert headers.get("access-control-allow-origin") is None
    finally:
        assert srv.stop() == 0


def test_cors_is_off_by_default(server):
    _, headers, _ = request(server.url + "/languages", headers={"Origin": "https://app.example"})
    assert headers.get("access-control-allow-origin") is None


def test_steady_concurrent_load_for_20_seconds_has_no_errors(server):
    stop_at, statuses = time.monotonic() + 20, []

    def client(i: int) -> None:
        for n in range(10_000):  # bounded in count as well as in time
            if time.monotonic() > stop_at:
                return
            ask = {"q": SENTENCES[(i + n) % len(SENTENCES)], "source": "en", "target": "de"}
            statuses.append(post_json(server.url + "/translate", ask)[0])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert statuses and set(statuses) == {200}


def test_sigterm_finishes_requests_in_flight_and_exits_0(bundle):
    srv = Server(bundle).start()
    results: list = []
    big = _start_big(srv.url, results)
    _wait_for(srv, "mtcli_serve_sentences_in_progress", 1)
    assert srv.stop() == 0
    big.join()
    assert results[0][0] == 200 and len(results[0][1]["results"]) == 64
    with pytest.raises(OSError):
        get(srv.url + "/health")


def test_two_bundles_for_one_pair_are_refused(bundle):
    out = cli("serve", "-m", str(bundle), "-m", str(bundle), "--port", "0")
    assert out.returncode == 2 and "en-de is served already" in out.stderr and "Traceback" not in out.stderr
    out = cli("serve", "-m", str(bundle), "--port", "0", "--batching", "sometimes")
    assert out.returncode == 2 and "--batching sometimes: choose one of continuous, pooled, off" in out.stderr


def test_a_ctranslate2_export_is_served_like_its_bundle(bundle, tmp_path):
    pytest.importorskip("ctranslate2")
    export = tmp_path / "ct2"
    made = cli("export", str(bundle), "--to", "ctranslate2", "-o", str(export))
    assert made.returncode == 0, made.stderr
    srv = Server(export).start()
    try:
        health = json.loads(get(srv.url + "/health")[2])
        assert health["status"] == "ok" and health["models"][0]["pair"] == "en-de"
        status, body = post_json(srv.url + "/v1/translate", {"lines": SENTENCES, "beam": 3, "nbest": 2})
        assert status == 200 and same_results(body["results"], offline_cli(export, SENTENCES, "--beam", "3", "--nbest", "2"))
        expected = [r["hypotheses"] for r in offline_cli(export, SENTENCES)]
        with ThreadPoolExecutor(len(SENTENCES)) as pool:
            answers = list(pool.map(lambda s: post_json(srv.url + "/v1/translate", {"lines": [s]}), SENTENCES))
        assert [(status, body["results"][0]["hypotheses"]) for status, body in answers] == [(200, e) for e in expected]
        ask = {"q": SENTENCES[0], "source": "auto", "target": "de", "alternatives": 1}
        status, body = post_json(srv.url + "/translate", ask)
        assert status == 200 and body["translatedText"] == expected[0][0]["text"] and len(body["alternatives"]) == 1
    finally:
        assert srv.stop() == 0
