"""Atomic file writes: write a temporary file in the same folder, fsync it, then `os.replace` it into place.

A reader (or a crash) sees either the old file or the complete new one, never a half-written file: if anything
fails before the rename, the temporary file is removed and the old file is left untouched.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(folder / "a.txt", "hello").read_text()
    'hello'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from neuronscope.errors import NeuronscopeError

# Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path` for writing; on a clean exit it replaces `path` atomically.

    Errors of the body pass through unchanged; a failure to create, flush or rename the file (disk full, no
    permission) is a `NeuronscopeError` naming the file. Either way `path` keeps its previous contents.

    Args:
        path: the final file; its folder is created if needed.
        mode: "wb" (default) or "w" (text, UTF-8 unless `encoding` is given).
        encoding: text encoding for mode "w".

    Example:
        >>> with atomic_open(folder / "b.bin") as handle:  # doctest: +SKIP
        ...     handle.write(b"data")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _disk_error(path, error) from None
    try:
        if mode == "w":
            handle: IO[Any] = os.fdopen(descriptor, "w", encoding=encoding or "utf-8", newline="")
        else:
            handle = os.fdopen(descriptor, "wb")
        with handle:
            yield handle
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as error:
                raise _disk_error(path, error) from None
        try:
            # mkstemp creates 0600 files; give the result the usual permissions of a new file.
            os.chmod(temporary, 0o666 & ~_UMASK)
            os.replace(temporary, path)
        except OSError as error:
            raise _disk_error(path, error) from None
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as handle:
        try:
            handle.write(data)
        except OSError as error:
            raise _disk_error(Path(path), error) from None
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (newlines written as given); returns `path`."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        try:
            handle.write(text)
        except OSError as error:
            raise _disk_error(Path(path), error) from None
    return Path(path)


def _disk_error(path: Path, error: OSError) -> NeuronscopeError:
    return NeuronscopeError(f"cannot write {path}: {error.strerror or error}; check that its folder is writable "
                            "and the disk has free space (the previous version of the file, if any, is intact)")
