"""Atomic file output.

Everything the package writes goes to a temporary name in the destination directory and is renamed
into place only when complete: a killed job never leaves a file (or directory) that looks finished.
``os.replace`` is atomic on POSIX when source and destination are on the same file system, which a
sibling temporary name guarantees.
"""

from __future__ import annotations

import contextlib
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
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new directory is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
