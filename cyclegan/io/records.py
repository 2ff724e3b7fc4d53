"""Reading back the JSON and JSONL records the package writes (`manifest.json`, `metrics.jsonl`,
`.translation.json`, `run.json`, `state.json`, export sidecars) and writing them.

A record that matters and is damaged or incomplete ends in a one-line message naming the file
and what is wrong, never a traceback. A log's last line cut off by a full disk or a killed
node is dropped with a warning: the rows before it are intact, and a resume must go on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cyclegan.errors import DataError, UserError
from cyclegan.io.files import atomic_write


def read_json(path: Path, required: Sequence[str] = (), error: type[UserError] = DataError) -> dict:
    """The JSON object in `path`, which must hold the `required` keys; anything else raises
    `error` naming the file."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None
    return parse_json(text, str(path), required, error)


def parse_json(text: str | bytes, where: str, required: Sequence[str] = (), error: type[UserError] = DataError) -> dict:
    """The JSON object `text` (a file's content, or a record stored elsewhere: an ONNX model's
    metadata), which must hold the `required` keys; anything else raises `error` naming `where`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise error(f"{where}: not valid JSON (not UTF-8 text)") from None
    return require(value, required, where, error)


KINDS = {list: "a list", int: "a whole number", str: "a string", dict: "a JSON object"}  # for messages


def require(record: object, keys: Sequence[str] | Mapping[str, type], where: str,
            error: type[UserError] = DataError) -> dict:
    """`record`, a JSON object holding `keys` (with a mapping, each of its type); `where` names it
    in the message (a file, or a file and the path of keys to a part of it)."""
    if not isinstance(record, dict):
        raise error(f"{where}: not a JSON object but {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise error(f"{where}: has no '{key}' key")
        kind = keys[key] if isinstance(keys, Mapping) else object
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise error(f"{where}: '{key}' must be {KINDS.get(kind, kind.__name__)}, not {value!r}")
    return record


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL log. A last line that does not parse (cut off mid-write) is dropped
    with a warning; a damaged line before it (not JSON, or not UTF-8 text, as `read_json` reads)
    raises `DataError` naming the file and line."""
    try:
        lines = Path(path).read_bytes().splitlines()  # decoded line by line: a cut-off last line may end mid-character
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for position, (number, line) in enumerate(numbered):
        try:
            row, parsed = json.loads(line.decode("utf-8")), True
        except (UnicodeDecodeError, json.JSONDecodeError):
            row, parsed = None, False
        if isinstance(row, dict):
            rows.append(row)
        elif position == len(numbered) - 1 and not parsed:  # valid JSON of another kind is no cut-off line
            print(f"warning: {path}: dropped its last line ({number}), which was cut off", file=sys.stderr)
        else:
            raise DataError(f"{path}: line {number} is not a JSON object; repair or remove that line")
    return rows


def write_json(path: Path, value: object) -> None:
    """Write `value` as indented JSON, atomically."""
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Rewrite a JSONL log whole, atomically (a crash mid-rewrite leaves the old log)."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path: Path, row: dict) -> None:
    """Add one row to a JSONL log, flushed at once, so that a crash loses at most this row."""
    with Path(path).open("a") as out:
        out.write(json.dumps(row) + "\n")
        out.flush()
