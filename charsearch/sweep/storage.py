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
from pathlib import Path

import pyarrow
import pyarrow.fs

from ..errors import UsageError
from ..sweepfile import SweepConfig

RECORD_FILE = "charsearch.json"  # in the Ray experiment folder


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
        with self.fs.open_input_stream(f"{exp_dir}/{RECORD_FILE}") as f:
            return json.loads(f.read().decode())

    def write_record(self, exp_dir: str, record: dict) -> None:
        self.fs.create_dir(exp_dir)
        with self.fs.open_output_stream(f"{exp_dir}/{RECORD_FILE}") as f:
            f.write(json.dumps(record).encode())

    def show(self, path: str) -> str:
        return f"{self.scheme}://{path}" if self.remote else path
