"""Atomic file output.

Everything the package writes goes to a temporary name in the destination directory and is renamed
into place only when complete: a killed job never leaves a file (or directory) that looks finished.
``os.replace`` is atomic on POSIX when source and destination are on the same file system, which a
sibling temporary name guarantees.

A write that fails because of the machine, not the data (a full filesystem, a quota, a read-only
mount, missing permissions) becomes one :class:`~selectmoe.errors.IntegrityError` line naming the
file, the free space of its filesystem and what to do (:func:`explain_write_failure`); the
partial file is removed as after any failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "atomic_output_dir",
    "atomic_path",
    "atomic_save_npz",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "dumps_json_line",
    "explain_write_failure",
]

#: errno -> what it means for an output, and what to do
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("the filesystem is full", "free space there"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within the quota"),
    errno.EROFS: ("the filesystem is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "make the directory writable for this user"),
    errno.EPERM: ("operation not permitted", "make the directory writable for this user"),
}
#: a failed write with less free space than this is taken for a full filesystem: torch's writer
#: reports one as "unexpected pos" or "iostream error", without an errno
_FULL_BELOW_BYTES = 16 << 20


def _errno_of(error: BaseException) -> int | None:
    """The errno of ``error`` or of the exceptions it was raised from."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def explain_write_failure(path: str | os.PathLike[str], error: BaseException) -> Exception | None:
    """An :class:`~selectmoe.errors.IntegrityError` explaining why writing ``path`` failed, when
    the machine is the cause (the errnos of :data:`_ENVIRONMENT_ERRNOS`, or any failure with the
    filesystem all but full); None when it is not."""
    from selectmoe.errors import IntegrityError, SelectMoeError

    if isinstance(error, SelectMoeError) or not isinstance(error, Exception):
        return None
    directory = Path(path).parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    code = _errno_of(error)
    if code in _ENVIRONMENT_ERRNOS:
        reason, remedy = _ENVIRONMENT_ERRNOS[code]
    elif isinstance(error, OSError | RuntimeError) and usage.free < _FULL_BELOW_BYTES:
        reason, remedy = _ENVIRONMENT_ERRNOS[errno.ENOSPC]
    else:
        return None
    return IntegrityError(
        f"cannot write {os.fspath(path)}: {reason} ({_size(usage.free)} free of "
        f"{_size(usage.total)} on the filesystem of {directory}); {remedy} or set results_dir to "
        "another filesystem, then rerun with --rerun-incomplete (nothing partial was left)"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as error:
        raise (explain_write_failure(final, error) or error) from error
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        explained = explain_write_failure(final, error)
        if explained is not None:
            raise explained from error
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new directory is complete.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as error:
        raise (explain_write_failure(final, error) or error) from error
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        explained = explain_write_failure(final, error)
        if explained is not None:
            raise explained from error
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(value: Any) -> Any:
    """Serialise the non-JSON types the package produces (numpy scalars, paths, tensors)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (keys in insertion order, UTF-8)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)
    atomic_write_text(path, text + "\n")


def dumps_json_line(record: Any) -> str:
    """One JSONL line (no newline) in the canonical form the package writes."""
    return json.dumps(record, ensure_ascii=False, default=_json_default)


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write one JSON object per line to ``path`` atomically; return the number of lines."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps_json_line(record))
            handle.write("\n")
            count += 1
    return count


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """``numpy.savez_compressed`` of ``arrays`` to ``path`` atomically (no pickled objects)."""
    import numpy as np

    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **{name: np.asarray(value) for name, value in arrays.items()})
