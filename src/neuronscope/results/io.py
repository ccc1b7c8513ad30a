"""Every file neuronscope writes goes through here: atomic writes and the formats a user keeps.

Atomic: a temporary file in the same folder, fsynced, then ``os.replace``; a reader (or a crash) sees either the
old file or the complete new one, never a half-written file, and a failure leaves the old file untouched.

Formats: JSON (:func:`write_json`, tensors / numpy / paths / dataclasses converted), CSV (:func:`write_csv`, floats
with full precision), PNG (:func:`write_png`, a matplotlib Figure or a PIL image), safetensors with a JSON
metadata header (:func:`write_safetensors`), and the readers :func:`read_json` / :func:`read_safetensors`, whose
errors name the file and say what to do (a damaged file is never read silently).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(folder / "a.txt", "hello").read_text()
    'hello'
    >>> read_json(write_json(folder / "m.json", {"pcr": -0.5}))
    {'pcr': -0.5}
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from neuronscope.errors import InputError, NeuronscopeError, ResultFileError

#: The safetensors metadata key under which neuronscope keeps a file's JSON metadata.
METADATA_KEY = "neuronscope"

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


# ---------------------------------------------------------------------------------------------------- JSON
def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj``; tensors and numpy values become lists/numbers, paths strings, dataclasses dicts.

    Example:
        >>> to_json({"a": Path("x"), "b": {1, 2}}, indent=None)
        '{"a": "x", "b": [1, 2]}'
    """
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a torch tensor (torch is not imported here)
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if type(value).__name__ in ("dtype", "device") and type(value).__module__ == "torch":
        return str(value).replace("torch.", "")
    raise TypeError(f"cannot write a {type(value).__name__} as JSON; convert it to numbers, strings or lists")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; returns the path."""
    return atomic_write_text(path, to_json(obj) + "\n")


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """The JSON in ``path``; a missing or damaged file is a :class:`ResultFileError` that names it.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "scores metadata").
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultFileError(f"{path}: not found; the {what} is missing (rerun the step that writes it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f"line {error.lineno}: " if isinstance(error, json.JSONDecodeError) else ""
        raise ResultFileError(f"{path}: {where}the {what} is damaged (not valid JSON); rerun the step that writes "
                              "it") from None


# ---------------------------------------------------------------------------------------------------- CSV
def csv_text(rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str], name: str = "table") -> str:
    """A CSV table with a header; rows are dicts (missing keys left empty) or sequences of ``len(columns)``.

    Floats are written with ``repr`` (they read back exactly), tensors and numpy scalars as Python numbers.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for number, row in enumerate(rows):
        if isinstance(row, Mapping):
            unknown = set(row) - set(columns)
            if unknown:
                raise InputError(f"row {number} of {name} has columns {sorted(unknown)} not in {list(columns)}; "
                                       "add them to the columns")
            values = [row.get(column, "") for column in columns]
        else:
            values = list(row)
            if len(values) != len(columns):
                raise InputError(f"row {number} of {name} has {len(values)} values for {len(columns)} "
                                       "columns")
        writer.writerow([_plain(value) for value in values])
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str]) -> Path:
    """Write a CSV table atomically (see :func:`csv_text`); returns the path."""
    return atomic_write_text(path, csv_text(rows, columns, Path(path).name))


def _plain(value: Any) -> Any:
    if hasattr(value, "numel") and hasattr(value, "tolist"):  # a torch tensor
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


# ---------------------------------------------------------------------------------------------------- PNG
def write_png(path: str | Path, image: Any, dpi: int = 110) -> Path:
    """Write a matplotlib Figure or a PIL image as PNG, atomically; returns the path."""
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    elif hasattr(image, "save"):
        image.save(buffer, format="PNG")
    else:
        raise TypeError(f"write_png takes a matplotlib Figure or a PIL image, got {type(image).__name__}")
    return atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------------- safetensors
def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors (moved to CPU, made contiguous, views copied) with JSON ``metadata``, atomically.

    Example:
        >>> import torch
        >>> file = write_safetensors(folder / "t.safetensors", {"x": torch.ones(2)}, {"method": "ig"})
        >>> read_safetensors(file)[1]
        {'method': 'ig'}
    """
    from safetensors.torch import save as save_safetensors

    data = save_safetensors(own_storage(tensors), metadata={METADATA_KEY: to_json(dict(metadata or {}), indent=None)})
    return atomic_write_bytes(path, data)


def read_safetensors(path: str | Path, *, what: str = "tensor file") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, metadata)`` of a file written by :func:`write_safetensors` (or any safetensors file: its
    metadata is then ``{}``); a missing, cut or damaged file is a :class:`ResultFileError` that names it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: not found; the {what} is missing (rerun the step that writes it)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            raw = (handle.metadata() or {}).get(METADATA_KEY, "{}")
        return tensors, json.loads(raw)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ResultFileError(f"{path}: the {what} is damaged or cut short ({error}); rerun the step that writes "
                              "it") from None


def check_safetensors(path: str | Path, *, what: str = "tensor file") -> list[str]:
    """The tensor names of a safetensors file whose header and size are consistent (no tensor is read); a missing,
    cut or damaged file is a :class:`ResultFileError` that names it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: not found; the {what} is missing (rerun the step that writes it)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ResultFileError(f"{path}: the {what} is damaged or cut short ({error}); rerun the step that writes "
                              "it") from None


def own_storage(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """CPU, contiguous tensors; views into another tensor's memory are copied (safetensors refuses shared memory)."""
    import torch

    prepared: dict[str, Any] = {}
    storages: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"tensor '{key}' is a {type(value).__name__}; only torch tensors can be stored")
        value = value.detach().to("cpu").contiguous()
        if value.numel():
            storage = value.untyped_storage()
            partial = storage.nbytes() != value.numel() * value.element_size()
            if partial or storage.data_ptr() in storages:
                value = value.clone()
            storages.add(value.untyped_storage().data_ptr())
        prepared[key] = value
    return prepared
