"""Helpers for the tests of the servers (charsearch serve, mlflow models serve, the MLflow UI)."""

import socket
import time
import urllib.request

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float, log=None) -> float:
    """Seconds until `url` answers 200; fails early if the process exits."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before answering {url}"
                                 f"{': ' + log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s{': ' + log.read_text()[-3000:] if log else ''}")


def one_thread(fn):
    """Run fn with one torch thread, as `charsearch serve` generates: character-by-character sampling on
    shared cores is over ten times slower with intra-op threads contending."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)
