"""Concrete GPU ids for each workflow job: one lock per device, so no two running jobs share one.

Snakemake's ``--resources gpu=N`` only counts: it keeps the sum of the running jobs' ``gpu``
resources at or below ``N`` but does not say *which* devices a job may use. A job therefore
claims its devices here before it touches CUDA:

- the devices of this machine are ``$SELECTMOE_GPUS`` (a comma-separated list; fake ids make the
  locking testable on a CPU machine), else ``$CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi``
  lists, else none;
- each device has a lock file ``gpu-<id>.lock`` in a directory shared by all jobs of the machine
  (``$SELECTMOE_GPU_LOCK_DIR``, default ``<tmp>/selectmoe-gpu-locks``). A job takes an exclusive
  ``flock`` on as many free devices as it asks for, waiting while fewer are free. The kernel
  drops a ``flock`` when its process ends in any way (SIGKILL included), so a dead job never
  leaves a device locked;
- the job then runs with ``CUDA_VISIBLE_DEVICES`` set to exactly its devices (they appear as
  ``cuda:0 .. cuda:n-1`` inside the job and its ``accelerate launch`` children). A job asking for
  no GPU runs with ``CUDA_VISIBLE_DEVICES=""`` so that it cannot silently land on a device another
  job holds.

Under a batch scheduler (``$SLURM_JOB_ID`` set) the scheduler has already given the job its own
devices in ``$CUDA_VISIBLE_DEVICES``; they are used as they are, without locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from selectmoe.errors import ConfigError

__all__ = ["DeviceLease", "acquire_gpus", "default_lock_dir", "machine_gpus"]

logger = logging.getLogger(__name__)

GPU_LIST_ENV = "SELECTMOE_GPUS"
LOCK_DIR_ENV = "SELECTMOE_GPU_LOCK_DIR"
POLL_SECONDS = 0.5  # how often a waiting job retries the locks
WAIT_LOG_SECONDS = 60.0  # how often a waiting job says that it is still waiting


@dataclass
class DeviceLease:
    """The devices a job holds: ``device_ids`` as the machine names them (CUDA_VISIBLE_DEVICES)."""

    device_ids: tuple[str, ...]
    locked: bool
    waited_seconds: float = 0.0
    _handles: list[IO[str]] = field(default_factory=list, repr=False)

    @property
    def visible_devices(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` value of the job."""
        return ",".join(self.device_ids)

    def release(self) -> None:
        """Drop the locks (closing the files releases the ``flock``)."""
        for handle in self._handles:
            with contextlib.suppress(OSError):
                handle.close()
        self._handles.clear()


def _split_ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def machine_gpus() -> list[str]:
    """The GPU ids jobs on this machine may claim, in order (see the module docstring)."""
    if GPU_LIST_ENV in os.environ:
        return _split_ids(os.environ[GPU_LIST_ENV])
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return _split_ids(os.environ["CUDA_VISIBLE_DEVICES"])
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def default_lock_dir() -> Path:
    """``$SELECTMOE_GPU_LOCK_DIR``, else ``<tmp>/selectmoe-gpu-locks`` (shared by all jobs)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    return Path(tempfile.gettempdir()) / "selectmoe-gpu-locks"


def _lock_file_name(device_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id)
    return f"gpu-{safe}.lock"


def _open_lock(path: Path) -> IO[str]:
    """Open (creating it writable for every user of the machine) one device's lock file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8").strip() or "unknown"
    return "unknown"


def _try_lock(path: Path, job_name: str) -> IO[str] | None:
    handle = _open_lock(path)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} {job_name}\n")
    handle.flush()
    return handle


def _lease_once(
    device_ids: Sequence[str], count: int, lock_dir: Path, job_name: str
) -> DeviceLease | None:
    """Lock ``count`` free devices (lowest ids first), or none and return None."""
    handles: list[IO[str]] = []
    taken: list[str] = []
    for device_id in device_ids:
        handle = _try_lock(lock_dir / _lock_file_name(device_id), job_name)
        if handle is None:
            continue
        handles.append(handle)
        taken.append(device_id)
        if len(taken) == count:
            return DeviceLease(tuple(taken), locked=True, _handles=handles)
    for handle in handles:
        handle.close()
    return None


def acquire_gpus(
    count: int,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    job_name: str = "",
) -> DeviceLease:
    """Claim ``count`` GPUs of this machine for the calling process.

    Parameters
    ----------
    count : int
        GPUs the job needs (its Snakemake ``gpu`` resource); 0 gives an empty lease.
    lock_dir : path, optional
        Directory of the per-device lock files; default :func:`default_lock_dir`.
    timeout : float, optional
        Seconds to wait for free devices before giving up; None waits as long as it takes
        (Snakemake's ``gpu`` resource bounds how many jobs wait at once).
    job_name : str
        Written into the lock files, so that a waiting job can say who holds its devices.

    Returns
    -------
    DeviceLease
        Holds the locks until :meth:`DeviceLease.release` or the end of the process.

    Raises
    ------
    ConfigError
        ``count`` is negative or larger than the number of devices of the machine, or the
        devices stayed busy for ``timeout`` seconds.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"a job's gpu resource must be an integer >= 0, got {count!r}")
    if count == 0:
        return DeviceLease((), locked=False)
    device_ids = machine_gpus()
    if os.environ.get("SLURM_JOB_ID") and "CUDA_VISIBLE_DEVICES" in os.environ:
        allocated = _split_ids(os.environ["CUDA_VISIBLE_DEVICES"])
        if len(allocated) < count:
            visible = os.environ["CUDA_VISIBLE_DEVICES"]
            raise ConfigError(
                f"the job needs {count} GPU(s) but SLURM job {os.environ['SLURM_JOB_ID']} was "
                f"given {len(allocated)} (CUDA_VISIBLE_DEVICES={visible!r}); request as many "
                "with the rule's slurm resources (gpu / gres)"
            )
        return DeviceLease(tuple(allocated[:count]), locked=False)
    if count > len(device_ids):
        found = ", ".join(device_ids) if device_ids else "none"
        raise ConfigError(
            f"the job needs {count} GPU(s) but this machine has {len(device_ids)} ({found}; from "
            f"${GPU_LIST_ENV}, $CUDA_VISIBLE_DEVICES or nvidia-smi); lower resources.gpus for "
            "this stage in the config, or run on a machine with more GPUs"
        )
    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        directory.chmod(0o1777)  # shared by every user's jobs, like /tmp
    start = time.monotonic()
    next_log = start + WAIT_LOG_SECONDS
    while True:
        lease = _lease_once(device_ids, count, directory, job_name)
        if lease is not None:
            lease.waited_seconds = time.monotonic() - start
            return lease
        now = time.monotonic()
        holders = "; ".join(
            f"{device} held by {_holder(directory / _lock_file_name(device))}"
            for device in device_ids
        )
        if timeout is not None and now - start >= timeout:
            raise ConfigError(
                f"no {count} free GPU(s) after {timeout:g} s ({holders}); lock files in {directory}"
            )
        if now >= next_log:
            logger.info("waiting for %d free GPU(s): %s", count, holders)
            next_log = now + WAIT_LOG_SECONDS
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def gpu_environment(
    count: int,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    job_name: str = "",
) -> Iterator[DeviceLease]:
    """Hold ``count`` GPUs and set ``CUDA_VISIBLE_DEVICES`` to them for the block.

    Must be entered before CUDA is initialised in the process (the CUDA runtime reads the
    variable once). The previous value is restored afterwards.
    """
    lease = acquire_gpus(count, lock_dir=lock_dir, timeout=timeout, job_name=job_name)
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = lease.visible_devices
    if count:
        logger.info(
            "GPUs of this job: CUDA_VISIBLE_DEVICES=%s (%s, waited %.1f s)",
            lease.visible_devices,
            "locked" if lease.locked else "given by SLURM",
            lease.waited_seconds,
        )
    try:
        yield lease
    finally:
        lease.release()
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
