"""Files charsearch reads and writes: what a path is, where a write may go, atomic writes.

A write replaces only a regular file (or makes a new one): a FIFO, a device node, a socket or a folder
at the target is refused before anything is written, and a symbolic link is followed to the file it
names rather than replaced. The write itself goes through a temporary file in the target's folder,
renamed into place, so a crash never leaves a half-written file under the target's name.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from charsearch.core.errors import UsageError


def not_a_file(path: Path) -> str:
    """Why `path` is not a regular file to read, in a few words (for an error line)."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links"
        return "no such file" if e.errno == errno.ENOENT else (e.strerror or str(e)).lower()
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file (a device or socket)" if not stat.S_ISREG(mode) else "a regular file"


def write_target(path: str | Path) -> Path:
    """The file a write to `path` lands in: `path` itself, or the file a symbolic link there names.
    Raises UsageError, touching nothing, when that is anything but a regular file or a new name."""
    path = Path(path)
    real = Path(os.path.realpath(path))  # follows every link; a dangling one names the file to create
    try:
        mode = real.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink() and not real.parent.is_dir():
            raise UsageError(f"{path}: a symbolic link to {real}, whose folder does not exist; give a file "
                             f"path to write") from None
        return real
    except OSError as e:
        raise UsageError(f"{path}: cannot write there ({(e.strerror or str(e)).lower()})") from None
    if stat.S_ISREG(mode):
        return real
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path}: a folder; give the path of a file to write")
    raise UsageError(f"{path}: {not_a_file(real)}; charsearch writes only to a regular file or a new path, and "
                     f"leaves this one untouched")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def atomic_write(path: str | Path, write) -> None:
    """Write through a temporary file in the target's folder and rename it into place (see write_target
    for what may be replaced)."""
    target = write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~UMASK)  # as open() would have made it; mkstemp's files are private
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
