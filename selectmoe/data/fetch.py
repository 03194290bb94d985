"""Fetch the LESS training pool from the Hugging Face Hub and unpack the files the workflow reads.

LESS (Xia et al., 2024) publishes its pool as the Hub dataset ``princeton-nlp/less_data``: one
archive, ``less-data.zip``, whose training pool sits at::

    data/train/processed/{cot,dolly,flan_v2,oasst1}/{dataset}_data.jsonl

(the archive also holds evaluation data under ``data/eval/``, which is not extracted).
:func:`fetch_less_pool` downloads the archive (or takes a local copy), finds each requested
dataset's file wherever it sits in the archive, and stream-copies only those members to
``{pool_dir}/{file_pattern}``, each written atomically. Pool files that already exist are kept.

Without network (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached) and without a cached or local
archive it fails at once with one line naming every file to put in place by hand.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from selectmoe.errors import DataError
from selectmoe.io import atomic_path

__all__ = [
    "LESS_ARCHIVE",
    "LESS_EXPECTED_LINES",
    "LESS_REPO_ID",
    "LESS_TRAIN_DIR",
    "download_less_archive",
    "fetch_less_pool",
    "fetch_pool_files",
    "hub_dataset_url",
]

logger = logging.getLogger(__name__)

LESS_REPO_ID = "princeton-nlp/less_data"
LESS_ARCHIVE = "less-data.zip"
#: Where the training pool sits inside the LESS archive (below a top-level ``data/`` folder).
LESS_TRAIN_DIR = "train/processed"
#: Examples per dataset of the published LESS pool (270,679 in all); a mismatch is only logged.
LESS_EXPECTED_LINES: dict[str, int] = {
    "cot": 100_000,
    "dolly": 15_011,
    "flan_v2": 100_000,
    "oasst1": 55_668,
}
_CHUNK = 1 << 20
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def hub_dataset_url(repo_id: str) -> str:
    """The web page of a Hub dataset repository."""
    return f"https://huggingface.co/datasets/{repo_id}"


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (read now, not at huggingface_hub import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _OFFLINE_VALUES


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's path in POSIX form, without a leading ``./`` or ``/``."""
    name = info.filename.replace("\\", "/")
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


def _is_junk(name: str) -> bool:
    """macOS resource forks and folders that zip tools add beside the real files."""
    parts = PurePosixPath(name).parts
    return "__MACOSX" in parts or (bool(parts) and parts[-1].startswith("._"))


def _ends_with(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("/" + suffix)


def _find_member(names: Sequence[str], dataset: str, relative: str) -> str | None:
    """The archive member holding ``dataset``'s pool file.

    Looked for, in order: members whose path ends with ``relative`` (the pool's ``file_pattern``
    for this dataset), preferring one below ``train/processed/``; then the LESS layout
    ``*/train/processed/{dataset}/{dataset}_data.jsonl``. Two equally good candidates are an error.
    """
    candidates = [n for n in names if _ends_with(n, relative)]
    if len(candidates) > 1:
        processed = [n for n in candidates if _ends_with(n, f"{LESS_TRAIN_DIR}/{relative}")]
        candidates = processed or candidates
    if not candidates:
        less_layout = f"{LESS_TRAIN_DIR}/{dataset}/{dataset}_data.jsonl"
        candidates = [n for n in names if _ends_with(n, less_layout)]
    if len(candidates) > 1:
        raise DataError(
            f"the archive holds several files for dataset {dataset!r}: {', '.join(candidates)}; "
            "keep one of them in the archive, or place the pool file by hand"
        )
    return candidates[0] if candidates else None


def _copy_stream(source: IO[bytes], destination: Path) -> dict[str, Any]:
    """Copy ``source`` to ``destination`` in chunks; return its line count, size and SHA-256."""
    digest = hashlib.sha256()
    lines = 0
    size = 0
    last = b""
    with destination.open("wb") as handle:
        while chunk := source.read(_CHUNK):
            handle.write(chunk)
            digest.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
            last = chunk[-1:]
        handle.flush()
        os.fsync(handle.fileno())
    if size and last != b"\n":
        lines += 1
    return {"lines": lines, "bytes": size, "sha256": digest.hexdigest()}


def _file_stats(path: Path) -> dict[str, Any]:
    """Line count, size and SHA-256 of an existing file (read in chunks)."""
    digest = hashlib.sha256()
    lines = 0
    size = 0
    last = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1
    return {"lines": lines, "bytes": size, "sha256": digest.hexdigest()}


def _manual_hint(missing: dict[str, Path], repo_id: str, filename: str) -> str:
    paths = ", ".join(os.fspath(path) for path in missing.values())
    return (
        f"put the pool files at {paths} (from {hub_dataset_url(repo_id)}, {filename}: "
        f"unzip it and copy data/{LESS_TRAIN_DIR}/<dataset>/<dataset>_data.jsonl), "
        f"or pass a local copy of {filename} as the archive (config data.fetch.archive)"
    )


def _download(
    repo_id: str, filename: str, cache_dir: str | os.PathLike[str] | None, hint: str
) -> Path:
    """Download the archive into the Hub cache (or take the cached copy); one-line errors that
    end with ``hint`` (what to put in place by hand)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    connection_errors: tuple[type[BaseException], ...] = (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        ConnectionError,
        TimeoutError,
    )
    # the HTTP client's transport errors, whichever client this huggingface_hub uses
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            error_type = getattr(module, name, None)
            if isinstance(error_type, type) and issubclass(error_type, BaseException):
                connection_errors += (error_type,)

    offline = _hub_offline()
    logger.info(
        "fetching %s from %s%s",
        filename,
        hub_dataset_url(repo_id),
        " (HF_HUB_OFFLINE is set: cache only)" if offline else "",
    )
    try:
        path = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            repo_type="dataset",
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=offline,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise DataError(
            f"dataset repository {repo_id!r} was not found on the Hugging Face Hub (or is gated: "
            f"{_one_line(error, 120)}); check data.fetch.repo_id, or {hint}"
        ) from None
    except connection_errors as error:
        why = "HF_HUB_OFFLINE is set" if offline else _one_line(f"{type(error).__name__}: {error}")
        raise DataError(
            f"cannot reach the Hugging Face Hub to download {filename} ({why}) and it is not in "
            f"the local cache; {hint}"
        ) from None
    except EntryNotFoundError as error:
        raise DataError(
            f"{filename!r} is not a file of the Hub dataset {repo_id!r} ({_one_line(error, 120)}); "
            f"check data.fetch.filename, or {hint}"
        ) from None
    except HfHubHTTPError as error:
        raise DataError(
            f"downloading {filename} from {hub_dataset_url(repo_id)} failed "
            f"({_one_line(error, 160)}); try again later, or {hint}"
        ) from None
    return Path(path)


def _extract(
    archive: Path, wanted: dict[str, Path], file_pattern: str
) -> dict[str, dict[str, Any]]:
    """Stream-copy each dataset's member of ``archive`` to its destination (atomically)."""
    # NotImplementedError: a compression method zipfile cannot read (e.g. deflate64)
    corrupt = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [_member_name(i) for i in zf.infolist() if not i.is_dir()]
            names = [n for n in names if not _is_junk(n)]
            by_name = {_member_name(i): i for i in zf.infolist() if not i.is_dir()}
            members: dict[str, str] = {}
            missing: list[str] = []
            for dataset in wanted:
                member = _find_member(names, dataset, file_pattern.format(dataset=dataset))
                if member is None:
                    missing.append(dataset)
                else:
                    members[dataset] = member
            if missing:
                shown = [n for n in names if n.endswith(".jsonl")] or names
                listing = ", ".join(shown[:20]) + (
                    f", ... ({len(shown) - 20} more)" if len(shown) > 20 else ""
                )
                raise DataError(
                    f"{archive}: no pool file for dataset(s) {', '.join(missing)} in the archive "
                    f"(looked for */{LESS_TRAIN_DIR}/<dataset>/<dataset>_data.jsonl and "
                    f"*/{file_pattern}); it holds: {listing or 'no files'}; "
                    "fix data.datasets or use another archive"
                )
            results: dict[str, dict[str, Any]] = {}
            for dataset, destination in wanted.items():
                member = members[dataset]
                logger.info("extracting %s -> %s", member, destination)
                with atomic_path(destination) as tmp, zf.open(by_name[member]) as source:
                    stats = _copy_stream(source, tmp)
                results[dataset] = {"member": member, **stats}
            return results
    except corrupt as error:
        raise DataError(
            f"{archive}: not a readable zip archive ({_one_line(error, 160)}); download it again "
            "(a damaged copy in the Hugging Face cache: delete it, the next run downloads it anew)"
        ) from None


def fetch_pool_files(source: str = "less_archive", **arguments: Any) -> dict[str, Any]:
    """Rule ``fetch_pool``: the pool files from LESS's archive (:func:`fetch_less_pool`) or from a
    Hugging Face dataset (``source="hf"``, :func:`selectmoe.data.hf_pool.export_hf_pool`)."""
    if source == "hf":
        from selectmoe.data.hf_pool import export_hf_pool

        return export_hf_pool(**arguments)
    if source != "less_archive":
        raise DataError(f"data.source {source!r}: use less_archive or hf")
    return fetch_less_pool(**arguments)


def fetch_less_pool(
    pool_dir: str | os.PathLike[str],
    datasets: Sequence[str],
    file_pattern: str,
    *,
    repo_id: str = LESS_REPO_ID,
    filename: str = LESS_ARCHIVE,
    archive: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Unpack the LESS training pool to ``{pool_dir}/{file_pattern}`` for every dataset.

    Parameters
    ----------
    pool_dir
        Directory of the pool (config ``data.pool_dir``).
    datasets
        Datasets to extract (config ``data.datasets``), e.g. ``cot, dolly, flan_v2, oasst1``.
    file_pattern
        Pool file of a dataset relative to ``pool_dir``, with ``{dataset}`` (config
        ``data.file_pattern``).
    repo_id, filename
        Hub dataset repository and archive file to download when ``archive`` is not given.
    archive
        A local zip with the same layout; when given, nothing is downloaded.
    cache_dir
        Hugging Face cache directory for the download (default: the usual Hub cache).
    overwrite
        Replace pool files that already exist; by default they are kept as they are (a user's
        own copy is never touched) and only the missing ones are extracted.

    Returns
    -------
    dict
        ``source`` (repository, archive path used), ``pool_dir``, ``file_pattern``, and per
        dataset in ``datasets``: ``path``, ``status`` (``extracted`` or ``kept``), ``member`` (the
        archive member, ``None`` when kept), ``lines``, ``bytes`` and ``sha256``; ``total_lines``.

    Raises
    ------
    DataError
        One line: the Hub cannot be reached and the archive is neither cached nor given (naming
        every file to put in place by hand and where to get it), the repository or archive does
        not exist, the archive is not a readable zip, or a requested dataset is not in it.
    """
    if not datasets:
        raise DataError("no datasets to fetch; set data.datasets in the config")
    if "{dataset}" not in file_pattern:
        raise DataError(
            f"file pattern {file_pattern!r} has no {{dataset}} placeholder; "
            "set data.file_pattern, e.g. '{dataset}/{dataset}_data.jsonl'"
        )
    root = Path(pool_dir)
    targets = {d: root / file_pattern.format(dataset=d) for d in dict.fromkeys(datasets)}
    missing = {d: p for d, p in targets.items() if overwrite or not p.is_file()}

    archive_path: Path | None = None
    extracted: dict[str, dict[str, Any]] = {}
    if missing:
        if archive is not None:
            archive_path = Path(archive)
            if not archive_path.is_file():
                raise DataError(
                    f"archive {archive_path} does not exist; download {filename} from "
                    f"{hub_dataset_url(repo_id)} there, or set data.fetch.archive to null to "
                    "download it"
                )
        else:
            archive_path = _download(
                repo_id, filename, cache_dir, _manual_hint(missing, repo_id, filename)
            )
        extracted = _extract(archive_path, missing, file_pattern)

    files: dict[str, dict[str, Any]] = {}
    for dataset, path in targets.items():
        if dataset in extracted:
            entry = {"path": os.fspath(path), "status": "extracted", **extracted[dataset]}
        else:
            logger.info("keeping existing %s", path)
            entry = {"path": os.fspath(path), "status": "kept", "member": None, **_file_stats(path)}
        expected = LESS_EXPECTED_LINES.get(dataset)
        if repo_id == LESS_REPO_ID and expected is not None and entry["lines"] != expected:
            logger.warning(
                "%s has %d lines; the published LESS %s has %d examples",
                path,
                entry["lines"],
                dataset,
                expected,
            )
        files[dataset] = entry
    return {
        "source": {
            "repo_id": repo_id,
            "filename": filename,
            "url": hub_dataset_url(repo_id),
            "archive": os.fspath(archive_path) if archive_path is not None else None,
        },
        "pool_dir": os.fspath(root),
        "file_pattern": file_pattern,
        "datasets": files,
        "total_lines": sum(entry["lines"] for entry in files.values()),
    }


def download_less_archive(
    hint: str,
    *,
    repo_id: str = LESS_REPO_ID,
    filename: str = LESS_ARCHIVE,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download ``filename`` of the Hub dataset ``repo_id`` (or take the cached copy).

    The download and its one-line errors are :func:`fetch_less_pool`'s; each error ends with
    ``hint`` (what to put in place by hand, e.g. "download less-data.zip from ... and pass it as
    ..."; it follows "; " or ", or ").

    Raises
    ------
    DataError
        The Hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the file is not cached, the
        repository or file does not exist, or the download failed.
    """
    return _download(repo_id, filename, cache_dir, hint)
