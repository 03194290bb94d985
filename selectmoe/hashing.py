"""SHA-256 digests of files and texts: the one place the package hashes content.

A checkpoint or shard that a later run reads back carries a *digest sidecar*, ``<file>.sha256``
in ``sha256sum``'s format, written after the file is in place (:func:`write_digest_sidecar`) and
checked before the file is trusted (:func:`check_digest_sidecar`): ``torch.load`` does not check
the CRC-32 that ``torch.save`` writes, so a damaged tensor record would load without a word.
Hashing reads the file once: 0.78 s per GiB here, a fifth of ``torch.save``'s write
(``benchmarks/integrity.py``, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import os

__all__ = [
    "DIGEST_SUFFIX",
    "DigestMismatch",
    "check_digest_sidecar",
    "file_sha256",
    "text_sha256",
    "write_digest_sidecar",
]

#: the suffix of a file's digest sidecar
DIGEST_SUFFIX = ".sha256"

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DigestMismatch(Exception):
    """A file's content differs from its digest sidecar (or the sidecar is missing)."""

    def __init__(self, path: os.PathLike[str] | str, expected: str | None, actual: str) -> None:
        self.path, self.expected, self.actual = os.fspath(path), expected, actual
        recorded = f"recorded {expected}" if expected else "no digest recorded"
        super().__init__(f"{self.path}: content sha256 {actual}, {recorded}")


def _sidecar(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + DIGEST_SUFFIX


def write_digest_sidecar(path: str | os.PathLike[str]) -> str:
    """Write ``<path>.sha256`` (atomically) with the file's SHA-256; returns the digest."""
    from selectmoe.io import atomic_write_text

    value = file_sha256(path)
    atomic_write_text(_sidecar(path), f"{value}  {os.path.basename(os.fspath(path))}\n")
    return value


def check_digest_sidecar(path: str | os.PathLike[str]) -> str:
    """The file's SHA-256 when it equals its sidecar's.

    Raises
    ------
    DigestMismatch
        When the content differs from the sidecar, or no sidecar exists (a file written
        without one, or a kill between the file and its sidecar: both untrusted).
    """
    actual = file_sha256(path)
    try:
        with open(_sidecar(path), encoding="utf-8") as handle:
            expected = handle.read().split()[0]
    except (OSError, IndexError):
        raise DigestMismatch(path, None, actual) from None
    if expected != actual:
        raise DigestMismatch(path, expected, actual)
    return actual
