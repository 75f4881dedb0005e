"""Atomic file writes: a crash or an exception mid-write leaves the old file intact.

Everything is written to a temporary file in the destination's directory (same file
system, so the final ``os.replace`` is an atomic rename), flushed and fsynced, then
renamed over the destination. Readers see either the old or the new file, never a
truncated one.

A temporary file is named ``.<name>.<pid>.<random>.tmp``. It is removed when the write
fails or is interrupted; a process killed outright (SIGKILL, power loss) cannot do
that, so :func:`remove_stale_temp_files` removes those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from shrinkage.errors import DataError

log = logging.getLogger(__name__)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: ``.<target name>.<writer pid>.<random>.tmp``, as written by :func:`atomic_path`
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit it replaces ``path``.

    For writers that insist on a file name (``safetensors.torch.save_file``). The
    temporary file is fsynced before the rename and removed if the block raises,
    KeyboardInterrupt included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name tells a later process whether the file is abandoned
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    tmp = Path(tmp_name)
    replaced = False
    try:
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files in ``directory`` whose writing process no longer exists.

    Returns what was removed. Files of live processes (this one included) are kept:
    they may be mid-write. Best effort: an unreadable directory removes nothing.
    """
    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it up first
        except OSError as error:
            log.warning("cannot remove stale temporary file %s: %s", entry, error.strerror or error)
            continue
        log.info("removed %s, left by an interrupted write (process %s)", entry, match["pid"])
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # os.kill(pid, 0) is no harmless probe on Windows: never guess there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # not a pid this system can have
    except OSError:
        return True  # e.g. EPERM: it exists, owned by someone else
    return True


@contextlib.contextmanager
def reporting_write_errors(what: str, path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into ``DataError("cannot write <what> <path>: <why>")``.

    For output locations the user chose (``--out``): a read-only or missing mount, or a
    path under a regular file, is their problem to fix, worth one line, not a traceback.
    """
    try:
        yield
    except DataError:
        raise
    except OSError as error:
        raise DataError(f"cannot write {what} {path}: {_why(Path(path), error)}") from None


def _why(path: Path, error: OSError) -> str:
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        # name the culprit: "Not a directory" alone does not say which component is a file
        for candidate in (path, *path.parents):
            try:
                if candidate.exists() and not candidate.is_dir():
                    return f"{candidate} is a file, not a directory"
            except OSError:
                break
    return error.strerror or str(error)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """``open()`` for writing whose result only appears at ``path`` if the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        kwargs: dict[str, Any] = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as block-style YAML, keys in the given order."""
    write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Atomically write ``rows`` as CSV; ``columns`` defaults to every key, first-seen order.

    The text is built in memory first: the CSV is rewritten whole each time (metrics.csv
    after every epoch), so a reader never sees a half-written table.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
