"""Which MLflow store a command uses, and its client.

The store is named by --tracking-uri, then $MLFLOW_TRACKING_URI, then the sweep file's `tracking.uri`,
then DEFAULT_TRACKING_URI (requested_uri). A local SQLite store is created only by a sweep's writes:
commands that read sweeps, and --resume, refuse one that does not exist rather than create it by looking.
An http(s) server must answer before anything is written to it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from charsearch.core.errors import UsageError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # MLflow 3.17+ refuses the plain file store
SOURCES = ("--tracking-uri", "MLFLOW_TRACKING_URI", "the sweep file's tracking.uri", "the default")


def requested_uri(flag: str | None = None, configured: str | None = None) -> tuple[str, str]:
    """(the store a command is asked to use, which of SOURCES named it)."""
    for uri, source in zip((flag, os.environ.get("MLFLOW_TRACKING_URI"), configured, DEFAULT_TRACKING_URI), SOURCES):
        if uri:
            return uri, source
    raise AssertionError("the default is never empty")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite URI (relative to the working folder with three slashes), else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def resolve_uri(flag: str | None = None, configured: str | None = None) -> str:
    """The store a sweep writes to (requested_uri), its SQLite folder made; the plain file store refused."""
    uri, _ = requested_uri(flag, configured)
    if uri.startswith(("file:", "/", ".")) or "://" not in uri:
        raise UsageError(f"tracking URI {uri!r}: MLflow 3 no longer writes the plain file store; use "
                         f"{DEFAULT_TRACKING_URI} (the default), another database URI, or http://host:port")
    if (path := sqlite_path(uri)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return uri


def existing_store(uri: str) -> bool:
    """Whether a store is there to read: a local SQLite file must exist (MLflow would create it by looking);
    any other store is asked when it is used."""
    path = sqlite_path(uri)
    return path is None or path.is_file()


def recorded_store(flag: str | None) -> str:
    """The store of a command that reads sweeps: one that does not exist holds none, and is not created."""
    uri, _ = requested_uri(flag)
    if not existing_store(uri):
        raise UsageError(f"no sweeps recorded in {uri} (no such database): run `charsearch sweep FILE` first, "
                         f"or pass --tracking-uri")
    return resolve_uri(uri)


def client_for(uri: str) -> MlflowClient:
    configure()
    check_server(uri)
    path = sqlite_path(uri)
    if path is not None:
        # MLflow keeps one store per URI string for the process: a relative path must not outlive a chdir
        uri = f"sqlite:///{path.absolute()}"
    mlflow.set_tracking_uri(uri)
    if path is None or uri in _opened:
        return MlflowClient(uri)
    with open(f"{path.absolute()}.lock", "a") as lock:
        # the first use creates the database's tables; two commands creating one store at once collide
        # (SQLAlchemy's CircularDependencyError, alembic's migration errors), so first openings take turns
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    _opened.add(uri)
    return client


_opened: set[str] = set()  # SQLite stores this process has opened (their tables made or found)


SERVER_PROBE_S = 5.0
_answered: set[str] = set()  # servers that answered once in this process: an outage later is the Writer's


def check_server(uri: str) -> None:
    """A tracking server named by an http(s) URI must answer before anything is written to it: MLflow's own
    client retries a refused connection for minutes. Any HTTP answer will do; none is one line."""
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_PROBE_S).close()
    except urllib.error.HTTPError:  # it answered
        pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UsageError(f"tracking server {uri} does not answer ({reason}); start it (e.g. mlflow server "
                         f"--port PORT) or pass another --tracking-uri") from None
    _answered.add(uri)


_configured = threading.Event()


def configure() -> None:
    """Quiet MLflow for a command line, once per process (a user's own environment wins): no artifact
    progress bars, no "View run at" line per ended run (the sweep keeps one live line), no table
    creation notices; the writers' retries on the live line instead of urllib3's warnings; and every
    background write waited for (a while) before the process exits."""
    if _configured.is_set():
        return
    _configured.set()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from charsearch.tracking.writer import QuietWriterRetries, flush_at_exit
    logging.getLogger("urllib3.connectionpool").addFilter(QuietWriterRetries())
    atexit.register(flush_at_exit)


