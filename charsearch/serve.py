"""`charsearch serve`: a web page and a JSON API to sample from one model file, in one process.

Python's ThreadingHTTPServer, no framework and no queue (the Chinese char-rnn fork needed Flask, redis
and a Lua worker for the same). Work per request is bounded (body size, JSON nesting, prime text,
length) and at most `max_concurrent` samples are generated at once; a request beyond that is answered
429 at once rather than queued, so one client cannot stall everyone else. A request's head and body
must arrive within REQUEST_S seconds in all, so a client sending a byte at a time cannot hold a
connection (and its thread) either. A client that goes away stops its generation; the log says after how
many characters.

    GET  /              the page: prime text, temperature, length, seed; the text streams in
    GET  /api/model     the model: architecture, vocabulary, val loss, this server's limits
    POST /api/sample    JSON {"prime_text", "temperature", "length", "seed", "stream"}, all optional;
                        stream true (default): text/plain, chunked, the prime text first, then the
                        characters as they are generated; stream false: JSON {"text", "chars", "seconds"}
    errors              JSON {"error": "one line"}: 400 bad parameter, 404, 405, 411, 413, 429 busy
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from charsearch.core.config import (
    MAX_CONCURRENT,
    MAX_LENGTH,
    MAX_PRIME,
    REQUEST_FIELDS,
    SampleOptions,
    request_defaults,
)
from charsearch.core.errors import UsageError, excerpt
from charsearch.core.sample import Sampler, request_options
from charsearch.core.units import loss_text

MAX_BODY = 64 * 1024
REQUEST_S = 30  # seconds for a request's head and body, however slowly they come
BACKLOG = 128  # connections the kernel holds while all threads are busy accepting
FLUSH_S = 0.05  # streamed text is sent in pieces of at most this age: smooth on screen, few tiny writes


class SampleServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive on Ctrl-C
    request_queue_size = BACKLOG
    request_s = REQUEST_S

    def __init__(self, address, sampler: Sampler, info: dict, max_length: int = MAX_LENGTH,
                 max_concurrent: int = MAX_CONCURRENT):
        self.sampler, self.max_length = sampler, max_length
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.info = {**info, "max_length": max_length, "max_prime": MAX_PRIME, "max_concurrent": max_concurrent,
                     "defaults": request_defaults()}
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        """A client that left or was cut off mid-request is routine, not a traceback in the log."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses
    timeout = 30  # seconds a connection may sit idle or send slowly before it is closed
    server: SampleServer

    def handle_one_request(self):
        self._holding = False  # whether this request holds one of the server's generation slots
        # the socket timeout bounds each read; this bounds the whole head and body, so a client that
        # trickles a byte at a time is cut off (the timer is stopped once the request is read)
        self._deadline = threading.Timer(self.server.request_s, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def _cut_off(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the handler ends
        except OSError:
            pass

    def log_message(self, format, *args):  # one line per request on stderr, as http.server does, minus the host
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    # --- responses --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, headers)

    # --- routes -----------------------------------------------------------------------------

    def do_GET(self):
        self._deadline.cancel()
        path = urlsplit(self.path).path
        if path == "/":
            self._send(200, PAGE.encode(), "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                   "style-src 'unsafe-inline'"})
        elif path == "/api/model":
            self._json(200, self.server.info)
        elif path == "/api/sample":
            self._error(405, "POST a JSON object to /api/sample", {"Allow": "POST"})
        else:
            self._error(404, f"no such page: {path}")

    do_HEAD = do_GET

    def do_POST(self):
        path = urlsplit(self.path).path
        if path != "/api/sample":
            self.close_connection = True  # the body was not read
            return self._error(404 if path not in ("/", "/api/model") else 405, f"cannot POST to {path}")
        if "Content-Length" not in self.headers:
            self.close_connection = True
            return self._error(411, "send the JSON body with a Content-Length")
        try:
            n = int(self.headers["Content-Length"])
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            return self._error(413, f"request body must be 0 to {MAX_BODY:,} bytes; "
                                    f"got {self.headers['Content-Length']}")
        raw = self.rfile.read(n)
        if len(raw) < n:  # cut off by the deadline, or the client stopped sending
            self.close_connection = True
            return
        self._deadline.cancel()
        try:
            body = json.loads(raw or b"{}", parse_constant=_not_json)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except RecursionError:
            return self._error(400, "request body is nested too deeply; send one flat JSON object")
        except ValueError as e:
            why = " (NaN and Infinity are not JSON)" if "is not JSON" in str(e) else ""
            return self._error(400, f'request body must be a JSON object, e.g. {{"prime_text": "ROMEO:", '
                                    f'"length": 200}}{why}')
        stream = body.get("stream", True)
        try:
            if not isinstance(stream, bool):
                raise UsageError(f"stream must be true or false; got {excerpt(stream)}")
            opts = request_options(body, self.server.sampler.vocab, self.server.max_length, allowed=("stream",))
        except UsageError as e:
            return self._error(400, str(e))
        if not self.server.slots.acquire(blocking=False):
            return self._error(429, "busy: the server is generating as many samples as it allows at once; "
                                    "try again in a moment", {"Retry-After": "1"})
        self._holding, self._made = True, 0
        try:
            (self._stream if stream else self._whole)(opts)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left: stop generating for it
            self.log_message('"%s" client left after %d of %d characters', self.requestline, self._made,
                             opts.length)
        finally:
            self._release()

    def _release(self) -> None:
        """Free the generation slot, once: as soon as the text is made, so a client that has the whole
        response can always send its next request."""
        if self._holding:
            self._holding = False
            self.server.slots.release()

    def _whole(self, opts: SampleOptions) -> None:
        t0 = time.perf_counter()
        text = self.server.sampler.generate(opts)[0]
        seconds = time.perf_counter() - t0
        self._release()
        self._made = len(text) - len(opts.primetext)
        self._json(200, {"text": text, "chars": self._made, "seconds": round(seconds, 4)})

    def _stream(self, opts: SampleOptions) -> None:
        steps = self.server.sampler.stream(opts)
        first = next(steps)[0]  # the prime text (checked already), sent before any generated character
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            if data:  # an empty chunk would end the response
                self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        chunk(first)
        buf, sent = [], time.monotonic()
        for step in steps:
            buf.append(step[0])
            self._made += 1
            if time.monotonic() - sent >= FLUSH_S:
                chunk("".join(buf))
                buf, sent = [], time.monotonic()
        self._release()
        chunk("".join(buf))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def model_info(path: str, mf) -> dict:
    c, val = mf.config, mf.summary.get("val_loss")
    description = f"{mf.label}, vocabulary {len(mf.vocab)}"
    if isinstance(val, float):
        description += f", val loss {loss_text(val)}"
    return {"file": str(path), "description": description, "config": dict(c), "vocab_size": len(mf.vocab),
            "val_loss": val if isinstance(val, float) else None, "trial_id": mf.summary.get("trial_id")}


def make_server(model_path: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
                max_length: int = MAX_LENGTH, max_concurrent: int = MAX_CONCURRENT) -> SampleServer:
    """Load the model file (plain data only) and bind; every failure is one UsageError line."""
    from charsearch.core import artifact
    from charsearch.core.devices import resolve_device
    if max_length < 1:
        raise UsageError(f"--max-length must be >= 1; got {max_length}")
    if max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1; got {max_concurrent}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in [0, 65535] (0: any free port); got {excerpt(port)}")
    mf = artifact.load(model_path)
    sampler = Sampler(mf, resolve_device(device))
    try:
        return SampleServer((host, port), sampler, model_info(model_path, mf), max_length, max_concurrent)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host") from None


PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>charsearch sample</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  #model { color: #666; margin: 0 0 1rem; font-size: .9rem; }
  form { display: grid; grid-template-columns: repeat(3, 1fr) auto; gap: .6rem 1rem; align-items: end; }
  label { display: flex; flex-direction: column; font-size: .85rem; color: #444; gap: .2rem; }
  label.wide { grid-column: 1 / -1; }
  textarea, input { font: 14px ui-monospace, monospace; padding: .35rem; border: 1px solid #bbb; border-radius: 4px; }
  button { font-size: 1rem; padding: .4rem 1.2rem; border-radius: 4px; border: 1px solid #246; background: #2d6cdf;
           color: #fff; cursor: pointer; }
  #error { color: #a00; background: #fdecec; border: 1px solid #e6b3b3; padding: .5rem; border-radius: 4px; }
  #status { color: #666; font-size: .85rem; min-height: 1.2em; }
  #output { white-space: pre-wrap; font: 14px/1.35 ui-monospace, monospace; background: #f6f6f4; border: 1px solid #ddd;
            border-radius: 4px; padding: .8rem; min-height: 8rem; overflow-wrap: anywhere; }
</style>
</head>
<body>
<h1>charsearch sample</h1>
<p id="model">&nbsp;</p>
<form id="form" novalidate>
  <label class="wide">prime text
    <textarea id="prime_text" rows="2" placeholder="text to start from, e.g. ROMEO:"></textarea></label>
  %(inputs)s
  <button id="generate" type="submit">Generate</button>
</form>
<p id="error" role="alert" hidden></p>
<p id="status"></p>
<pre id="output" aria-live="polite"></pre>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const out = $("output"), error = $("error"), status = $("status"), button = $("generate");
let controller = null;

fetch("/api/model").then((r) => r.json()).then((m) => {
  $("model").textContent = m.description;
  for (const [name, value] of Object.entries(m.defaults)) {  // the API's own defaults, one truth
    if (name !== "prime_text") $(name).value = String(value);
  }
  $("length").title = "at most " + m.max_length;
});

function field(id) {  // numbers go as numbers; anything else as typed, so the server names the problem
  const raw = $(id).value.trim();
  return raw === "" ? null : (Number.isFinite(Number(raw)) ? Number(raw) : raw);
}

function showError(message) {
  error.textContent = message;
  error.hidden = false;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (controller) { controller.abort(); return; }  // the button stops a running generation
  error.hidden = true;
  out.textContent = "";
  out.dataset.state = "running";
  out.dataset.chunks = "0";
  status.textContent = "";
  const body = {prime_text: $("prime_text").value};
  for (const input of $("form").querySelectorAll("input")) body[input.id] = field(input.id);
  controller = new AbortController();
  button.textContent = "Stop";
  const t0 = performance.now();
  let chunks = 0;
  try {
    const res = await fetch("/api/sample", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify(body), signal: controller.signal});
    if (!res.ok) {
      const j = await res.json().catch(() => ({error: res.status + " " + res.statusText}));
      showError(j.error);
      out.dataset.state = "error";
      return;
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      out.append(value);
      out.dataset.chunks = String(++chunks);
      const n = out.textContent.length - body.prime_text.length, s = (performance.now() - t0) / 1000;
      status.textContent = n + " characters in " + s.toFixed(1) + " s";
    }
    out.dataset.state = "done";
  } catch (e) {
    out.dataset.state = e.name === "AbortError" ? "stopped" : "error";
    if (e.name !== "AbortError") showError("connection failed: " + e.message);
  } finally {
    controller = null;
    button.textContent = "Generate";
  }
});
</script>
</body>
</html>
"""


def page() -> str:
    """The page, with an input for every request field but the prime text (config.SampleOptions)."""
    modes = {"float": "decimal", "int": "numeric"}
    inputs = "\n  ".join(f'<label>{name} <input id="{name}" inputmode="{modes[f.type]}"></label>'
                          for name, f in REQUEST_FIELDS.items() if name != "prime_text")
    return PAGE_TEMPLATE.replace("%(inputs)s", inputs)


PAGE = page()
