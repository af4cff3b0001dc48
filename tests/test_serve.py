"""`charsearch serve`: the JSON API over real HTTP against the real command, and the page in a real Chromium."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from charsearch.core import artifact
from charsearch.core.sample import SampleOptions, Sampler
from charsearch.serve import make_server

from .conftest import ROOT, cli_env, kill_session, one_line_error, write_model
from .web import free_port, one_thread, wait_http

CHARS = tuple(sorted(set("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "model.pt"
    write_model(path, CHARS, "lstm", 64, seed=0, val_loss=2.25)
    return path


def start_serve(model_path, port, *flags, log: Path):
    """`charsearch serve` as a user starts it, in its own session (stopped with kill_session)."""
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "serve", str(model_path), "--port", str(port), *flags],
                         env=cli_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    try:
        startup = wait_http(f"http://127.0.0.1:{port}/api/model", p, timeout=60, log=log)
    except BaseException:
        kill_session(p.pid)
        raise
    return p, startup


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """One server for the API tests, with room for one sample at a time. Yields its port."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    p, startup = start_serve(model, port, "--max-concurrent", "1", log=log)
    print(f"charsearch serve answered after {startup:.1f} s")
    try:
        yield port
    finally:
        kill_session(p.pid)
        p.wait()


def post(port, body, timeout=60) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/api/sample", data, {"Content-Type": "application/json"})
    return conn.getresponse()


def pieces(resp) -> list[bytes]:
    """The body as the client received it, one entry per read of what had arrived."""
    out = []
    while chunk := resp.read1(65536):
        out.append(chunk)
    return out


def text_of(got: list[bytes]) -> str:
    return b"".join(got).decode()


def sample_json(port, **fields) -> str:
    r = post(port, {**fields, "stream": False})
    body = json.loads(r.read())
    assert r.status == 200, body
    return body["text"]


def test_streams_the_prime_first_then_the_text_as_it_is_generated(server, model):
    r = post(server, {"prime_text": "ROMEO:", "length": 3000, "temperature": 0.8, "seed": 5})
    assert r.status == 200 and r.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert r.getheader("Transfer-Encoding") == "chunked"
    got = pieces(r)
    text = text_of(got)
    assert got[0] == b"ROMEO:"  # sent before any character is generated
    assert len(text) == 6 + 3000 and len(got) >= 3, [len(g) for g in got]
    expected = one_thread(lambda: Sampler(artifact.load(model)).generate(SampleOptions("ROMEO:", 3000, 0.8, seed=5))[0])
    assert text == expected  # exactly what `charsearch sample` makes with the same options


def test_same_seed_same_text_and_the_whole_text_as_json(server):
    a = sample_json(server, prime_text="The ", length=200, seed=7)
    assert a.startswith("The ") and len(a) == 204
    assert sample_json(server, prime_text="The ", length=200, seed=7) == a
    assert sample_json(server, prime_text="The ", length=200, seed=8) != a
    assert text_of(pieces(post(server, {"prime_text": "The ", "length": 200, "seed": 7}))) == a
    r = post(server, {"stream": False})  # every field optional: no prime, 500 characters
    assert r.status == 200 and json.loads(r.read())["chars"] == 500
    r = post(server, {"temperature": 1e-300, "length": 50, "seed": 1, "stream": False})  # near argmax, no NaN
    assert r.status == 200 and json.loads(r.read())["chars"] == 50


@pytest.mark.parametrize("body, match", [
    ({"temperature": 0}, "temperature must be > 0"),
    ({"temperature": -1.5}, "temperature must be > 0"),
    ({"temperature": "hot"}, "temperature must be a number; got 'hot'"),
    ({"length": 5001}, "length must be <= 5,000"),
    ({"length": -1}, "length must be >= 0"),
    ({"length": 2.5}, "length must be an integer"),
    ({"seed": -1}, "seed must be in"),
    ({"prime_text": "ROMEO{}"}, "prime_text has characters the model's vocabulary lacks: '{', '}'"),
    ({"prime_text": "a" * 1001}, "prime_text is 1,001 characters; at most 1,000"),
    ({"prime_text": 5}, "prime_text must be a string"),
    ({"temp": 1}, "unknown field 'temp'; valid: prime_text, length, temperature, seed"),
    ({"stream": "yes"}, "stream must be true or false"),
    (b"not json", "request body must be a JSON object"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'{"temperature": NaN}', "(NaN and Infinity are not JSON)"),
    (b'{"temperature": -Infinity}', "(NaN and Infinity are not JSON)"),
    (b'{"seed": 1' + b"0" * 400 + b"}", "seed must be in [0, 2**63 - 1]; got <an integer of 1,329 bits>"),
    (b'{"length": 1' + b"0" * 400 + b"}", "length must be <= 5,000 (this server's limit); got <an integer of"),
    (b'{"temperature": 1' + b"0" * 400 + b"}", "temperature must be a number of sensible size"),
    (b"[" * 30_000 + b"]" * 30_000, "request body is nested too deeply"),
])
def test_bad_parameters_get_400_with_the_reason(server, body, match):
    r = post(server, body)
    assert r.status == 400 and r.getheader("Content-Type") == "application/json"
    assert match in json.loads(r.read())["error"]


def test_other_routes(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("GET", "/")
    r = conn.getresponse()
    page = r.read().decode()
    assert r.status == 200 and '<form id="form"' in page and "/api/sample" in page
    conn.request("GET", "/api/model")
    info = json.loads(conn.getresponse().read())
    assert info["description"].startswith("lstm 1x64, vocabulary 61, val loss 2.2500")
    assert info["max_length"] == 5000 and info["max_concurrent"] == 1
    conn.request("GET", "/nope")
    r = conn.getresponse()
    assert r.status == 404 and "no such page" in json.loads(r.read())["error"]
    conn.request("GET", "/api/sample")
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "POST"
    r.read()
    conn.request("POST", "/api/sample", b"x" * 70_000)
    r = conn.getresponse()
    assert r.status == 413 and "request body must be" in json.loads(r.read())["error"]


def test_a_request_beyond_the_concurrency_limit_gets_429(server):
    first = post(server, {"prime_text": "A", "length": 5000})
    assert first.status == 200 and first.read1(65536) == b"A"  # generating now, holding the only slot
    busy = post(server, {"prime_text": "B", "length": 10})
    assert busy.status == 429 and busy.getheader("Retry-After") == "1"
    assert "busy" in json.loads(busy.read())["error"]
    assert len(text_of(pieces(first))) == 5000  # the running sample is unaffected
    assert sample_json(server, prime_text="B", length=10).startswith("B")  # and the slot is free again


def test_a_burst_of_connections_is_answered(server):
    """Connections beyond the ones being served wait in the listen backlog instead of being reset."""
    results = []

    def one():
        try:
            r = post(server, {"length": 1, "stream": False}, timeout=30)
            results.append(r.status)
            r.read()
        except OSError as e:
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) <= {200, 429} and 200 in results, results


def test_a_client_that_trickles_its_request_is_cut_off(model):
    """The socket timeout bounds each read; the whole head and body must arrive within request_s."""
    srv = make_server(str(model), port=0)
    srv.request_s = 1
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        request = b"POST /api/sample HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{}"
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for byte in request:
                conn.send(bytes([byte]))
                time.sleep(0.1)
            if not conn.recv(1):  # the whole request went out: the server has closed it
                raise ConnectionResetError
        assert time.monotonic() - t0 < 4
        conn.close()
        r = post(port, {"length": 5, "stream": False}, timeout=10)  # others are served as before
        assert r.status == 200 and len(json.loads(r.read())["text"]) == 5
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A server over a model big enough that 5000 characters take seconds on a CPU. Yields (port, log)."""
    path = tmp_path_factory.mktemp("slow") / "model.pt"
    write_model(path, CHARS, "lstm", 512, 3, seed=0)
    port, log = free_port(), path.with_name("serve.log")
    p, _ = start_serve(path, port, "--max-concurrent", "1", log=log)
    try:
        yield port, log
    finally:
        kill_session(p.pid)
        p.wait()


def test_a_client_that_leaves_stops_its_generation(slow_server):
    port, log = slow_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/api/sample", json.dumps({"prime_text": "A", "length": 5000}).encode())
    r = conn.getresponse()
    assert r.read1(65536) == b"A"
    r.close()
    conn.close()  # the socket is gone: the server's next writes fail and it stops generating
    t0 = time.monotonic()
    while (resp := post(port, {"prime_text": "B", "length": 1, "stream": False})).status != 200:
        resp.read()
        assert resp.status == 429 and time.monotonic() - t0 < 60
        time.sleep(0.02)
    assert json.loads(resp.read())["chars"] == 1  # the slot came back
    left = re.findall(r"client left after (\d+) of 5000 characters", log.read_text())
    assert len(left) == 1 and int(left[0]) < 5000, log.read_text()


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from the kernel's own tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # 0A: LISTEN
                found.add(addr)
    return found


def test_binds_to_localhost_unless_told_otherwise(server):
    assert listening_addresses(server) == {"0100007F"}  # 127.0.0.1, little-endian hex; nothing on ::


def test_command_errors(model, tmp_path, capsys, server):
    one_line_error(capsys, "serve", str(tmp_path / "missing.pt"), match=re.escape("missing.pt: no such file"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    one_line_error(capsys, "serve", str(tmp_path / "junk.pt"), match=re.escape("not a charsearch model file"))
    one_line_error(capsys, "serve", str(model), "--port", str(server), match=re.escape(f"cannot listen on 127.0.0.1:{server}"))
    one_line_error(capsys, "serve", str(model), "--max-length", "0", match=re.escape("--max-length must be >= 1"))
    one_line_error(capsys, "serve", str(model), "--max-concurrent", "0", match=re.escape("--max-concurrent must be >= 1"))


# --- the page, in a real browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def best_model(smoke_sweep, tmp_path_factory) -> Path:
    """The smoke sweep's best model file (read from its MLflow store, which is left untouched)."""
    from charsearch.ship import selection as select
    _, uri, _ = smoke_sweep
    name, df = select.trials(uri)
    out = tmp_path_factory.mktemp("best") / "model.pt"
    select.export_best(uri, df, name, out)
    return out


@pytest.mark.slow
def test_the_page_streams_text_and_shows_errors(browser, best_model, tmp_path):
    port = free_port()
    p, _ = start_serve(best_model, port, log=tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#model", has_text="val loss").wait_for()  # (the page's CSP forbids eval: no wait_for_function)
        defaults = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model").read())["defaults"]
        assert [float(page.input_value(f"#{k}")) for k in ("temperature", "length", "seed")] == [
            defaults[k] for k in ("temperature", "length", "seed")]  # the page's defaults are the API's
        page.fill("#prime_text", "ROMEO:")
        page.fill("#temperature", "0.7")
        page.fill("#length", "3000")
        # record what the page shows while the text arrives, from inside the page
        page.evaluate("""() => { const out = document.getElementById('output'); window.seen = [];
            new MutationObserver(() => window.seen.push(out.textContent.length))
                .observe(out, {childList: true, subtree: true, characterData: true}); }""")
        page.click("#generate")
        page.wait_for_selector("#output[data-state=done]", timeout=120_000)
        text = page.text_content("#output")
        seen = page.evaluate("window.seen")
        assert text.startswith("ROMEO:") and len(text) == 3006
        growing = [n for n in seen if 0 < n < len(text)]
        assert len(set(growing)) >= 3 and growing == sorted(growing), seen  # it grew on screen, piece by piece
        assert "3000 characters in" in page.text_content("#status")

        # a shorter sample for the README's screenshot
        page.fill("#length", "600")
        page.click("#generate")
        page.wait_for_selector("#output[data-state=done]", timeout=60_000)
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("CHARSEARCH_UPDATE_DOCS"):  # refresh the README's picture on request only
            shutil.copy(shot, ROOT / "docs" / "serve.png")

        page.fill("#length", "5000")  # Generate turns into Stop while the text comes
        page.click("#generate")
        page.locator("#output", has_text=re.compile(r"[\s\S]{100}")).wait_for()
        assert page.text_content("#generate") == "Stop"
        page.click("#generate")
        page.wait_for_selector("#output[data-state=stopped]", timeout=30_000)
        assert len(page.text_content("#output")) < 5006 and page.text_content("#generate") == "Generate"

        page.fill("#temperature", "0")
        page.click("#generate")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "temperature must be > 0" in page.text_content("#error")
        assert page.text_content("#output") == "" and page.get_attribute("#output", "data-state") == "error"
        page.close()
    finally:
        kill_session(p.pid)
        p.wait()


def test_the_page_and_the_api_offer_exactly_the_request_fields_of_the_sampling_options(tmp_path):
    """One declaration (config.SampleOptions) makes the page's inputs, the API's defaults and the CLI's flags."""
    from charsearch.cli import build_parser
    from charsearch.core.config import REQUEST_FIELDS, SampleOptions
    from charsearch.serve import PAGE
    path = tmp_path / "m.pt"
    write_model(path, CHARS, val_loss=float("nan"))
    server = make_server(str(path), port=0)
    try:
        inputs = set(re.findall(r'<(?:input|textarea) id="(\w+)"', PAGE))
        assert inputs == set(REQUEST_FIELDS) == set(server.info["defaults"]) == {"prime_text", "temperature", "length",
                                                                                 "seed"}
        assert server.info["defaults"]["length"] == 500 and SampleOptions().length == 2000  # char-rnn's for the CLI
        # a summary's NaN val loss is no val loss: the API stays standard JSON
        assert server.info["val_loss"] is None
        json.loads(json.dumps(server.info), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    finally:
        server.server_close()
    sample = next(a for a in build_parser()._subparsers._group_actions[0].choices["sample"]._actions
                  if a.dest == "temperature")
    assert sample.default == SampleOptions.temperature and sample.option_strings == ["--temperature"]
