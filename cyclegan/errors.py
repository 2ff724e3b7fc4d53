"""User-facing errors.

Everything a user can get wrong (a config key, an image, a checkpoint, a shard) raises
`UserError` with a message that names the culprit and what to do. The scripts print that
message instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input, explained in the message."""


class ConfigError(UserError):
    """An unknown key, a wrong type or an impossible value in the run config."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the network."""


class DataError(UserError):
    """Missing shards, an empty domain, or images that cannot be used."""


def user_message(err: UserError) -> str:
    """The message alone: an error raised in a DataLoader worker arrives wrapped in the
    worker's traceback text, whose last line is the original message."""
    message = str(err)
    if message.startswith("Caught ") and "Original Traceback" in message:
        return message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return message


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's `main` so that a `UserError` ends it with its message and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {user_message(err)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
