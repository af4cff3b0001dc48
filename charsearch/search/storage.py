"""Where Tune keeps a sweep's experiment state and checkpoints (`ray.storage`), and the sweep's own record
there (charsearch.json: its MLflow parent run, tracking store, resolved sweep file and how it ended),
which links a Ray experiment folder to its MLflow runs and lets --resume check what it continues.

Storage goes through pyarrow's filesystems, as Tune's does. A local folder is made absolute (on a
cluster it must be shared storage mounted at the same path on every node and the driver); a URI
(s3://bucket/prefix, gs://..., with pyarrow's query options such as endpoint_override) is resolved once
and its filesystem handed to Tune, so every node writes to the same object store.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow
import pyarrow.fs

from charsearch.core.errors import UsageError, excerpt
from charsearch.search.sweepfile import SweepConfig

RECORD_FILE = "charsearch.json"  # in the Ray experiment folder
RECORD_MAX_BYTES = 1_000_000  # a record holds a sweep file (itself at most 1 MB) and a few names
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids
RECORD_FIELDS = {"parent_run_id": str, "tracking_uri": str, "sweep_file": str, "sweep": dict, "status": str}
RECORD_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


def record_problem(raw: bytes) -> tuple[dict | None, str | None]:
    """(the record, None), or (None, what is wrong with it): the one check of a record read back."""
    if len(raw) > RECORD_MAX_BYTES:
        return None, f"over {RECORD_MAX_BYTES:,} bytes"
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # RecursionError: brackets nested past the parser's depth
        return None, f"not JSON: {str(e)[:80] or type(e).__name__}"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    for key, kind in RECORD_FIELDS.items():
        if key in record and not isinstance(record[key], kind):
            return None, f"{key} is {excerpt(record[key])}; expected a {'string' if kind is str else 'mapping'}"
    if not RUN_ID.fullmatch(record.get("parent_run_id", "")):
        return None, f"parent_run_id is {excerpt(record.get('parent_run_id', '(missing)'))}; expected an MLflow run id"
    if not record.get("tracking_uri"):
        return None, "no tracking_uri"
    if record.get("status", "RUNNING") not in RECORD_STATUSES:
        return None, f"status is {excerpt(record['status'])}; expected one of {', '.join(RECORD_STATUSES)}"
    return record, None


class Storage:
    def __init__(self, sweep: SweepConfig):
        self.remote = "://" in sweep.storage
        if self.remote:
            try:
                self.fs, root = pyarrow.fs.FileSystem.from_uri(sweep.storage)
            except (pyarrow.ArrowException, ValueError) as e:
                raise UsageError(f"{sweep.path}: ray.storage {sweep.storage!r}: {e}") from None
            self.scheme = sweep.storage.split("://", 1)[0]
        else:
            self.fs, root = pyarrow.fs.LocalFileSystem(), str(Path(sweep.storage).absolute())
        self.root = root.rstrip("/")
        self.ray_fs = self.fs if self.remote else None  # Tune resolves local paths itself
        self.where = f"{sweep.path or sweep.name}: ray.storage"

    def check_writable(self) -> None:
        """A local storage folder that cannot be written is refused before anything starts."""
        if self.remote:
            return
        folder = Path(self.root)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{self.where} {self.root}: cannot write there ({existing} is "
                             f"{'not a folder' if existing is not None and not existing.is_dir() else 'not writable'});"
                             f" name a folder you can write to")

    def experiment_dirs(self, name: str) -> list[str]:
        """The sweep's experiment folders, oldest first (named by their start time)."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.root}/{name}", allow_not_found=True))
        dirs = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory)
        return [d for d in dirs if self.fs.get_file_info(f"{d}/{RECORD_FILE}").type == pyarrow.fs.FileType.File]

    def read_record(self, exp_dir: str) -> dict:
        """The record, checked (record_problem); a damaged one is one line naming it and what to do."""
        path = f"{exp_dir}/{RECORD_FILE}"
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read(RECORD_MAX_BYTES + 1)
        except (OSError, pyarrow.ArrowException) as e:
            raise UsageError(f"{self.show(path)}: cannot read the sweep's record ({str(e).splitlines()[0][:100]})") \
                from None
        record, problem = record_problem(raw)
        if problem:
            raise UsageError(f"{self.show(path)}: damaged sweep record ({problem}); it links these Ray results to "
                             f"their MLflow runs: restore it, or run the sweep without --resume to start a new one")
        return record

    def has_state(self, exp_dir: str) -> bool:
        """Whether Tune saved an experiment state (its trials) in the folder: a driver killed in its first
        seconds leaves the record and Tune's settings (tuner.pkl) without one, and Tune cannot restore that."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(exp_dir))
        return any(i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json") for i in infos)

    def set_aside_damaged_states(self, exp_dir: str) -> list[str]:
        """Tune restores from the newest experiment state file (experiment_state-<time>.json), written without
        a rename: a driver killed mid-write leaves it truncated. Newest first, each that is not JSON is
        renamed to <name>.damaged, so Tune takes the newest complete one. Returns the names set aside."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(exp_dir))
        states = sorted((i.path for i in infos if i.base_name.startswith("experiment_state-")
                         and i.base_name.endswith(".json")), reverse=True)
        damaged = []
        for path in states:
            try:
                with self.fs.open_input_stream(path) as f:
                    json.loads(f.read().decode("utf-8"))
                break
            except (ValueError, RecursionError, OSError, pyarrow.ArrowException):
                self.fs.move(path, f"{path}.damaged")
                damaged.append(path.rsplit("/", 1)[-1])
        return damaged

    def write_record(self, exp_dir: str, record: dict) -> None:
        self.fs.create_dir(exp_dir)
        with self.fs.open_output_stream(f"{exp_dir}/{RECORD_FILE}") as f:
            f.write(json.dumps(record).encode())

    def show(self, path: str) -> str:
        return f"{self.scheme}://{path}" if self.remote else path
