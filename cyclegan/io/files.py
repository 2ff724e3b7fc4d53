"""Writing files safely: the one way the package puts a file or folder in place.

Everything is written under a temporary name beside its target (same folder, so the rename
cannot cross file systems), flushed to disk, and renamed over the target: a file or folder
with the final name is always complete, and a write cut short leaves only a hidden
`.NAME.*.partial` entry. Temporary names are unique per write, so two processes writing
the same target never rename each other's half-written file. New files get the mode the
umask gives any other file (safetensors and `mkstemp` would leave 0600, which teammates on
a shared cluster cannot read). A write that fails (a read-only or full file system) ends in one
line naming the path (`cannot_write`), never a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cyclegan.errors import UserError


def _umask_from_proc() -> int | None:
    """The umask as Linux reports it (`Umask:` in /proc/self/status), read without changing it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    mask = os.umask(0)  # elsewhere the only way to read it is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_setting()


def _umask() -> int:
    """The process's umask, read (from /proc where there is one, so that a later change counts)
    without ever setting it: setting it, even for an instant, races with threads creating files."""
    mask = _umask_from_proc() if os.path.exists("/proc/self/status") else None
    return _UMASK_AT_IMPORT if mask is None else mask


class CannotWrite(UserError):
    """A write that failed (a full disk, a read-only folder), said in one line."""


def cannot_write(path: Path, err: OSError, then: str = "") -> CannotWrite:
    """The one message for a write that failed: the path, the system's reason, what to do."""
    advice = f", {then}" if then else ""
    return CannotWrite(f"cannot write {path} ({err.strerror or err}); free disk space or fix the folder's "
                       f"permissions{advice}")


def _ours(err: OSError, temporary: Path) -> bool:
    """Whether an error raised while filling `temporary` is a failed write there (not, say, a
    failed read of an input): no file named (a full disk) or a file at or under `temporary`."""
    if err.filename is None:
        return True
    named = Path(os.fsdecode(err.filename))
    return named == temporary or temporary in named.parents


def _settle(path: Path) -> None:
    """Flush `path` to disk and give it the mode a newly created file would have."""
    _sync(path)
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, for writers that need a path (safetensors, tar, video,
    ONNX): renamed over `target` when the block ends without error, removed otherwise. The
    path exists (empty) when the block starts."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise cannot_write(target, err) from None
    temporary = Path(name)

    def finish() -> None:
        _settle(temporary)
        os.replace(temporary, target)

    with _filled(target, temporary, finish, lambda: temporary.unlink(missing_ok=True)):
        yield temporary


def atomic_write(target: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `target` so that `target` is never seen half-written."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A new, empty folder beside `target` to fill: swapped in as `target` (`replace_folder`) when
    the block ends without error, removed otherwise."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as err:
        raise cannot_write(target, err) from None
    with _filled(target, staging, lambda: replace_folder(staging, target),
                 lambda: shutil.rmtree(staging, ignore_errors=True)):
        os.chmod(staging, 0o777 & ~_umask())
        yield staging


@contextmanager
def _filled(target: Path, staging: Path, finish: Callable[[], None], discard: Callable[[], None]) -> Iterator[None]:
    """The block fills `staging`; then `finish()` puts it in place as `target`. Should anything
    fail, `discard()` removes it; a failed write there or in `finish` (a full disk, a read-only
    folder) ends in one line naming `target`."""
    try:
        try:
            yield
        except OSError as err:
            if _ours(err, staging):
                raise cannot_write(target, err) from None
            raise
        try:
            finish()
        except OSError as err:
            raise cannot_write(target, err) from None
    except BaseException:
        discard()
        raise


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(staging: Path, target: Path) -> None:
    """Swap the fully written folder `staging` into place as `target`, by renames, once everything
    in it is flushed to disk (so that a crash after the swap cannot leave a folder of empty files).
    A reader sees the old folder or the new one, never a mix of them; between the two renames
    `target` does not exist for an instant (a reader then finds nothing, and a crash there leaves
    the old folder as `.NAME.*.old/previous`). The old one is removed afterwards."""
    staging, target = Path(staging), Path(target)
    for folder, _, files in os.walk(staging):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _sync(Path(folder) / name)
        _sync(Path(folder))
    old = _set_aside(target)
    os.replace(staging, target)
    _sync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _set_aside(path: Path) -> Path:
    """Move `path` (if it exists) out of sight, into a new hidden `.NAME.*.old` folder beside it,
    which `remove_leftovers` clears should the process die before removing it; returns that folder."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    if path.exists() or path.is_symlink():
        os.replace(path, old / "previous")
    return old


def remove_folder(path: Path) -> None:
    """Remove the folder `path` by first renaming it out of sight (`_set_aside`): a process killed
    mid-removal leaves a hidden leftover, never a half-deleted folder under the real name, which
    readers would take for a complete one (a checkpoint missing some of its files)."""
    shutil.rmtree(_set_aside(Path(path)), ignore_errors=True)


def remove_leftovers(folder: Path, recursive: bool = False, name: str | None = None) -> None:
    """Remove what writes cut short by a killed process left in `folder` (and below it, if
    `recursive`): the hidden `.NAME.*.partial` and `.NAME.*.old` entries of this module; with
    `name`, only those of that one target. Call it only where no other process is writing
    (under the folder's lock, or before a run starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    # the exact shape of `tempfile`'s names (its random part has no dot), so that `.shards.v2.x.partial`,
    # the staging of the output `shards.v2`, is not taken for a leftover of `shards`
    shape = re.compile(rf"\.{re.escape(name)}\.[^.]+\.(partial|old)" if name is not None else r"\..+\.(partial|old)")
    hidden = list(folder.rglob(".*") if recursive else folder.glob(".*"))
    for leftover in (path for path in hidden if shape.fullmatch(path.name)):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def writing(path: Path, then: str = "") -> Iterator[None]:
    """Turn a failed write (a full disk, a read-only folder) into a one-line message naming
    `path`, with `then` (what to do next) appended, instead of a traceback; a safe write inside
    the block that already said so gets `then` appended too."""
    try:
        yield
    except OSError as err:
        raise cannot_write(path, err, then) from None
    except CannotWrite as err:
        if not then or str(err).endswith(then):
            raise
        raise CannotWrite(f"{err}, {then}") from None
