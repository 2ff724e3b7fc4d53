"""Deciding what an output may replace, and keeping one writer per output folder.

Every deletion or replacement of an output is checked here first: an output never holds, is,
or lies inside a path the command reads (an input, a checkpoint, a run), so `--overwrite`
cannot remove the user's data, whatever paths they mistype.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cyclegan.errors import UserError
from cyclegan.io.files import cannot_write, remove_folder, remove_leftovers

LOCK = ".cyclegan.lock"  # in an output folder while a run writes it; the lock dies with the process
# what flock gives where the file system cannot lock (Lustre without -o flock, some NFS mounts)
UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
_warned: set[str] = set()


def _clash(output: Path, protected: Path) -> str | None:
    """How `output` would touch `protected`, or None if it would not."""
    if output == protected:
        return "is"
    if output in protected.parents:
        return "holds"
    if protected in output.parents:
        return "lies inside"
    return None


def prepare_output(output: Path, protected: Iterable[Path | str], overwrite: bool | None, *, resume: bool = False,
                   staged: bool = False, nested: bool = False) -> None:
    """Check `output` before anything is written there: refuse one that is, holds or lies inside a
    `protected` path (what the command reads); refuse an existing output without `overwrite`
    (None: the command has no `--overwrite`, so the user removes it), unless `resume` (the
    command goes on with what it finds there); with `overwrite`, remove it now (out of sight
    first: `files.remove_folder`), unless `staged` (the caller builds the new output beside it
    and swaps it in whole when complete, with `files.replace_folder` or `files.atomic_path`).
    With `nested`, the output may hold or lie inside a protected folder, only never be a
    protected path: for a command that removes and replaces nothing there but its own output,
    checks each file it writes against what it reads, and leaves its output out of what it reads."""
    output = Path(output)
    resolved = output.resolve()
    for path in protected:
        clash = _clash(resolved, Path(path).resolve())
        if clash == "is":
            raise UserError(f"the output {output} is an input of this command: choose another --output")
        if clash and not nested:
            raise UserError(f"the output {output} {clash} {path}, which this command reads: choose another output")
    if not output.exists() or resume:
        return
    if overwrite is None:
        raise UserError(f"the output {output} already exists: remove it or choose another --output")
    if not overwrite:
        raise UserError(f"the output {output} already exists: pass --overwrite to replace it")
    holder = lock_holder(output)
    if holder:
        raise UserError(f"the output {output} is being written by another run ({holder}): not replacing it")
    if staged:
        return
    if output.is_dir() and not output.is_symlink():
        remove_folder(output)
    else:
        output.unlink()


def _holder(fd: int) -> str:
    """Who the lock file open as `fd` says holds it."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "another process"


def _flock(fd: int, folder: Path, operation: int) -> bool:
    """`flock`, False where the file system cannot lock (warned about once per folder);
    BlockingIOError where another process holds a conflicting lock."""
    try:
        fcntl.flock(fd, operation)
        return True
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno not in UNSUPPORTED:
            raise
        if str(folder) not in _warned:
            _warned.add(str(folder))
            print(f"warning: the file system of {folder} cannot lock files ({err.strerror}): going on unlocked; "
                  "make sure no other run writes there at the same time", file=sys.stderr)
        return False


def lock_holder(folder: Path) -> str | None:
    """Who holds `folder`'s output lock ("pid N on HOST"), or None if nobody does (or the file
    system cannot tell). Tried as an exclusive lock, which every holder's lock blocks."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        _flock(fd, Path(folder), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


def _open_lock(folder: Path, name: str = LOCK) -> int:
    """The descriptor of the lock file `name` in `folder` (made if need be); a one-line error
    where it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code))
        return os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise cannot_write(folder, err, "or choose another output") from None


def _take(fd: int, folder: Path, output: Path) -> bool:
    """Lock `fd` (a lock file in `folder`) exclusively for `output` and record this process in it;
    False where the file system cannot lock; a one-line error naming the holder where another
    run holds it."""
    try:
        locked = _flock(fd, folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _held(output, fd) from None
    if locked:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return locked


def _held(output: Path, fd: int) -> UserError:
    return UserError(f"the output {output} is being written by another run ({_holder(fd)}): wait for it "
                     "to end or stop it, or choose another output")


@contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` (created if need be) for this run until the block ends. Another run gets a
    one-line error naming the holder; an unwritable folder gets one too. Taken exclusively
    first, so that nobody else holds it; then the leftovers of killed writers are removed
    (`remove_leftovers`), and the lock is turned shared, so that this run's other processes
    can hold it too (`join_output_lock`): while any of them lives, a second run is refused and
    their half-written files are safe. The lock is the kernel's (`flock`), so a killed process
    leaves none behind; where the file system cannot lock, a warning says so and the run goes
    on unlocked (without removing leftovers, which a live writer may own)."""
    folder = Path(folder)
    fd = _open_lock(folder)
    try:
        if _take(fd, folder, folder):
            remove_leftovers(folder, recursive=True)
            try:  # not atomic (flock drops, then takes): a run that slips in between is refused here
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _held(folder, fd) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def replacement_lock(output: Path) -> Iterator[None]:
    """Hold `output` exclusively until the block ends, for a command that builds it whole beside
    it and swaps it in (`make_shards`): the lock is the file `.NAME.lock` in the output's parent
    (made if need be), since the output itself is replaced. Another run gets a one-line error
    naming the holder, rather than clear this one's staging folder as a killed run's leftover.
    Unlocked, with a warning, where the file system cannot lock, as `output_lock`. The lock file
    is removed when the block ends (while still held), so the user's folder keeps no trace; a
    run that took the removed file meanwhile sees that it is gone and takes the new one."""
    output = Path(output)
    path = output.parent / f".{output.name}.lock"
    while True:
        fd = _open_lock(output.parent, path.name)
        try:
            if not _take(fd, output.parent, output) or _is_file(fd, path):
                break
        except UserError:  # held: by a live run, or by one that has just removed it and is letting go
            if _is_file(fd, path):
                os.close(fd)
                raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a file that its last holder removed: take the one at the path now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _is_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        found, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def join_output_lock(folder: Path) -> Iterator[None]:
    """Hold the lock that this run's main process took with `output_lock`, shared, until the
    block ends: a rerun is refused while this process lives, even if the main one died."""
    fd = os.open(Path(folder) / LOCK, os.O_RDWR)
    try:
        _flock(fd, Path(folder), fcntl.LOCK_SH | fcntl.LOCK_NB)  # the main process holds it shared: no conflict
        yield
    finally:
        os.close(fd)
