"""Writing files safely: the one way the package puts a file or folder in place.

Everything is written under a temporary name beside its target (same folder, so the rename
cannot cross file systems), flushed to disk, and renamed over the target: a file or folder
with the final name is always complete, and a write cut short leaves only a hidden
`.NAME.*.partial` entry. Temporary names are unique per write, so two processes writing
the same target never rename each other's half-written file. New files get the mode the
umask gives any other file (safetensors and `mkstemp` would leave 0600, which teammates on
a shared cluster cannot read).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cyclegan.errors import UserError


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it portably is to set it, so set it back at once
    os.umask(mask)
    return mask


def _settle(path: Path) -> None:
    """Flush `path` to disk and give it the mode a newly created file would have."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, for writers that need a path (safetensors, tar, video,
    ONNX): renamed over `target` when the block ends without error, removed otherwise. The
    path exists (empty) when the block starts."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        _settle(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(target: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `target` so that `target` is never seen half-written."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A new, empty folder beside `target` to fill: swapped in as `target` (`replace_folder`) when
    the block ends without error, removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_folder(staging: Path, target: Path) -> None:
    """Swap the fully written folder `staging` into place as `target`, by renames: a reader sees
    the old folder or the new one, never a mix; the old one is removed afterwards."""
    old = Path(tempfile.mkdtemp(prefix=f".{Path(target).name}.", suffix=".old", dir=Path(target).parent))
    if Path(target).exists():
        os.replace(target, old / "previous")
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writing(path: Path, then: str = "") -> Iterator[None]:
    """Turn a failed write (a full disk, a read-only folder) into a one-line message naming
    `path`, with `then` (what to do next) appended, instead of a traceback."""
    try:
        yield
    except OSError as err:
        advice = f", {then}" if then else ""
        raise UserError(f"cannot write {path} ({err.strerror or err}); free disk space or fix the folder's "
                        f"permissions{advice}") from None
