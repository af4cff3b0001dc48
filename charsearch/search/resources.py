"""Where trials run: starting (or joining) Ray, and the CPU and GPU share each trial asks for.

Trials ask for fractional GPUs so several small models share one GPU. With `resources.gpu: auto` the
share follows the work of one training step, W = characters per step x parameters (about the
multiply-adds of a step), from packing measured on one H100 with a standalone trainer: a 2x128
LSTM at B50 S50 (W = 0.7e9) still gained at 8 per GPU (x6.8), a 2x512 LSTM at B64 S100 (W = 27e9)
stopped gaining beyond 4 per GPU.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import ray

from charsearch.core.errors import UsageError

from charsearch.search import ray_compat
from charsearch.search.sweepfile import SweepConfig

GPU_SHARES = ((8e9, 0.125), (3e10, 0.25), (1.2e11, 0.5))  # (most work W, share of a GPU)
# seconds to wait for a cluster's address to accept a connection: Ray itself retries an address where nothing
# listens 20 times, ~36 s each, before it says so
REACH_TIMEOUT_S = 10.0


def init_ray(address: str | None, dashboard: bool, num_cpus: int | None = None) -> None:
    """A new local Ray (even where `ray start` left a cluster running: ray.init() would join it), or the
    cluster at `address` / $RAY_ADDRESS. SIGTERM then stops a sweep as Ctrl-C does."""
    if ray.is_initialized():
        return
    ray_compat.set_env_defaults()
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=dashboard, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)
    if address:  # an existing cluster: it has its own resources (num_cpus must not be passed)
        check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    stop_on_sigterm()


def check_reachable(address: str | None) -> None:
    """A one-line error, within REACH_TIMEOUT_S, where nothing accepts connections at a cluster's host:port
    (`address`, else $RAY_ADDRESS; 'auto' is found by Ray itself, from the cluster `ray start` registered on
    this machine)."""
    if not address or address == "auto":  # Ray's 'auto' reads RAY_ADDRESS first
        address = os.environ.get("RAY_ADDRESS") or address
    scheme, sep, rest = address.rpartition("://") if address else ("", "", "")
    if not address or address in ("auto", "local") or (sep and scheme != "ray"):  # other schemes: Ray's plugins
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"Ray address {address!r} (--address, ray.address or RAY_ADDRESS): expected host:port (the "
                         f"address `ray start --head` printed) or auto")
    try:
        connect(host.strip("[]"), int(port), REACH_TIMEOUT_S)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"no Ray cluster answers at {address} ({getattr(e, 'strerror', None) or e}): start one with "
                         f"`ray start --head` and give the address it printed, or leave out --address (ray.address, "
                         f"RAY_ADDRESS) to run on a local Ray") from None


def connect(host: str, port: int, timeout: float) -> None:
    """Open (and close) a TCP connection to `host`:port within `timeout` seconds, trying each of its addresses
    in turn as socket.create_connection does (localhost's ::1 may refuse where 127.0.0.1 listens); the lookup
    runs in a thread that is left behind where it hangs, since a socket's timeout does not bound getaddrinfo."""
    started = time.monotonic()
    found: list = []

    def lookup():
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as e:
            found.append(e)
    thread = threading.Thread(target=lookup, name="charsearch-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        raise TimeoutError(f"looking up {host} took over {timeout:g} s")
    if isinstance(found[0], Exception):
        raise found[0]
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in found[0]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(max(0.1, timeout - (time.monotonic() - started)))
                sock.connect(address)
                return
        except OSError as e:
            error = e
    raise error


def cluster_gpus(address: str | None) -> tuple[int, object]:
    """(GPUs the sweep's trials can use, how to calibrate on one of them): a cluster's (`address`,
    $RAY_ADDRESS: joined now) are measured in a Ray task that asks for a GPU; this machine's in a process
    here."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        import torch
        return torch.cuda.device_count(), None
    init_ray(address, dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus, (measure_on_gpu if gpus else None)


def measure_on_gpu(*args):
    """calibrate.calibrate_gpu, in a Ray task on a node with a GPU (its one-line errors stay one line)."""
    from charsearch.core.errors import UsageError
    from charsearch.search.calibrate import calibrate_gpu
    try:
        return ray.get(ray.remote(calibrate_gpu).options(num_gpus=1, num_cpus=1).remote(*args))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UsageError):
            raise UsageError(str(e.cause)) from None
        raise


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) raises SIGINT in its place: Tune ends the experiment as for
    Ctrl-C, the sweep records what it has, and --resume continues it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))


def step_work(sweep: SweepConfig, params: dict, vocab_size: int) -> float:
    from charsearch.core.model import param_count
    cfg = sweep.trial_config(params)
    n = param_count({"vocab_size": vocab_size, "model": cfg.model, "rnn_size": cfg.rnn_size,
                     "num_layers": cfg.num_layers, "embed_size": cfg.embed_size})
    return float(cfg.batch_size * cfg.seq_length * n)


def gpu_share(work: float) -> float:
    return next((share for limit, share in GPU_SHARES if work <= limit), 1.0)


def trial_resources(sweep: SweepConfig, cluster_gpus: float, vocab_size: int):
    """CPU/GPU per trial, and a note for the user ('' when none): a dict, or for `gpu: auto` on a cluster
    with GPUs a function of the trial's config (Tune asks it per trial). A sweep that asks for GPUs on a
    cluster without any runs on CPU (and says so) instead of leaving its trials pending for ever."""
    from ray.tune import PlacementGroupFactory
    if sweep.gpu == "auto":
        if cluster_gpus == 0:
            return {"cpu": sweep.cpu, "gpu": 0.0}, ""
        return (lambda config: PlacementGroupFactory(
            [{"CPU": sweep.cpu, "GPU": gpu_share(step_work(sweep, config, vocab_size))}])), ""
    note = ""
    gpu = float(sweep.gpu)
    if gpu > 0 and cluster_gpus == 0:
        note = (f"resources.gpu is {gpu} but the Ray cluster has no GPU: trials run on CPU "
                f"({sweep.cpu:g} CPU each) within the same budget")
        gpu = 0.0
    return {"cpu": sweep.cpu, "gpu": gpu}, note


def corners(sweep: SweepConfig) -> list[dict]:
    """The smallest and the largest trial of a search space (numeric extremes, each categorical value)."""
    numeric = {k: p for k, p in sweep.space.items() if all(isinstance(v, (int, float)) for v in p.values)}
    other = [k for k in sweep.space if k not in numeric]
    combos = [{}]
    for k in other:
        combos = [{**c, k: v} for c in combos for v in sweep.space[k].values]
    return [{**c, **{k: pick(p.values) for k, p in numeric.items()}} for c in combos for pick in (min, max)]
