"""Deciding what an output may replace, and keeping one writer per output folder.

Every deletion or replacement of an output is checked here first: an output never holds, is,
or lies inside a path the command reads (an input, a checkpoint, a run), so `--overwrite`
cannot remove the user's data, whatever paths they mistype.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cyclegan.errors import UserError

LOCK = ".cyclegan.lock"  # in an output folder while a run writes it; the lock dies with the process


def _clash(output: Path, protected: Path) -> str | None:
    """How `output` would touch `protected`, or None if it would not."""
    if output == protected:
        return "is"
    if output in protected.parents:
        return "holds"
    if protected in output.parents:
        return "lies inside"
    return None


def prepare_output(output: Path, protected: Iterable[Path | str], overwrite: bool, *, resume: bool = False,
                   staged: bool = False, nested: bool = False) -> None:
    """Check `output` before anything is written there: refuse one that is, holds or lies inside a
    `protected` path (what the command reads); refuse an existing output without `overwrite`,
    unless `resume` (the command goes on with what it finds there); with
    `overwrite`, remove it now, unless `staged` (the caller builds the new output beside it
    and swaps it in whole when complete, with `files.replace_folder` or `files.atomic_path`).
    With `nested`, the output may lie inside a protected folder (a command that never removes
    its output, and leaves it out of what it reads)."""
    output = Path(output)
    resolved = output.resolve()
    for path in protected:
        clash = _clash(resolved, Path(path).resolve())
        if clash and not (nested and clash == "lies inside"):
            raise UserError(f"the output {output} {clash} {path}, which this command reads: choose another output")
    if not output.exists() or resume:
        return
    if not overwrite:
        raise UserError(f"the output {output} already exists: pass --overwrite to replace it")
    holder = lock_holder(output)
    if holder:
        raise UserError(f"the output {output} is being written by another run ({holder}): not replacing it")
    if staged:
        return
    if output.is_dir() and not output.is_symlink():
        shutil.rmtree(output)
    else:
        output.unlink()


def lock_holder(folder: Path) -> str | None:
    """Who holds `folder`'s output lock ("pid N on HOST"), or None if nobody does."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "a process"
    finally:
        os.close(fd)


@contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` (created if need be) as its only writer until the block ends. Another run
    gets a one-line error naming the holder; an unwritable folder gets one too. The lock is
    the kernel's (`flock`), so a killed run leaves none behind."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "Permission denied")
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"cannot write to the output {folder} ({err.strerror or err}): choose a writable "
                        "folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            raise UserError(f"the output {folder} is being written by another run ({holder}): wait for it to "
                            "end or stop it, or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)
