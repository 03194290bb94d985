"""GPU assignment: per-device locks, CUDA_VISIBLE_DEVICES, SLURM allocations, fake devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selectmoe.errors import ConfigError
from selectmoe.workflow.devices import acquire_gpus, gpu_environment, machine_gpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Three fake devices with their own lock directory, outside any SLURM job."""
    monkeypatch.setenv("SELECTMOE_GPUS", "0,1,2")
    monkeypatch.setenv("SELECTMOE_GPU_LOCK_DIR", os.fspath(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return tmp_path / "locks"


def _child_env(lock_dir: Path, gpus: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SELECTMOE_GPUS=gpus, SELECTMOE_GPU_LOCK_DIR=os.fspath(lock_dir))
    env.pop("SLURM_JOB_ID", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.fspath(REPO), env.get("PYTHONPATH")]))
    return env


def _intervals_overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _assert_no_shared_device(records: list[dict]) -> None:
    for i, first in enumerate(records):
        for second in records[i + 1 :]:
            if _intervals_overlap(first, second):
                shared = set(first["devices"]) & set(second["devices"])
                assert not shared, f"jobs {first['job']} and {second['job']} shared {shared}"


def test_machine_gpus_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELECTMOE_GPUS", "4, 5,,6")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert machine_gpus() == ["4", "5", "6"]
    monkeypatch.delenv("SELECTMOE_GPUS")
    assert machine_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert machine_gpus() == []


def test_leases_take_free_devices_lowest_first_and_release(fake_gpus: Path) -> None:
    first = acquire_gpus(2, job_name="first")
    assert first.device_ids == ("0", "1") and first.locked
    assert "first" in (fake_gpus / "gpu-0.lock").read_text()
    second = acquire_gpus(1, timeout=0)
    assert second.device_ids == ("2",)
    with pytest.raises(ConfigError, match=r"no 1 free GPU\(s\) after 0 s .*0 held by pid"):
        acquire_gpus(1, timeout=0)
    first.release()
    third = acquire_gpus(2, timeout=0)
    assert third.device_ids == ("0", "1")
    second.release()
    third.release()


def test_bad_counts(fake_gpus: Path) -> None:
    assert acquire_gpus(0).device_ids == ()
    with pytest.raises(ConfigError, match=r"needs 4 GPU\(s\) but this machine has 3 \(0, 1, 2"):
        acquire_gpus(4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="integer >= 0"):
            acquire_gpus(bad)


def test_no_gpu_machine_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SELECTMOE_GPUS", "")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ConfigError, match=r"has 0 \(none.*lower resources.gpus"):
        acquire_gpus(1, lock_dir=tmp_path)


def test_environment_sets_and_restores_visible_devices(
    fake_gpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "previous")
    with gpu_environment(2) as lease:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" == lease.visible_devices
        with pytest.raises(ConfigError):
            acquire_gpus(2, timeout=0)  # only device 2 is left
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "previous"
    assert acquire_gpus(3, timeout=0).device_ids == ("0", "1", "2")  # all released
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with gpu_environment(0):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_slurm_allocation_is_used_without_locks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv("SELECTMOE_GPUS", raising=False)
    lease = acquire_gpus(2, lock_dir=tmp_path / "locks")
    assert lease.device_ids == ("3", "5") and not lease.locked
    assert not (tmp_path / "locks").exists()
    with pytest.raises(ConfigError, match="SLURM job 4242 was given 2"):
        acquire_gpus(3)


def test_a_killed_holder_frees_its_device(fake_gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL leaves no stale lock: the kernel drops the flock with the process."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from selectmoe.workflow.devices import acquire_gpus; "
            "lease = acquire_gpus(1, job_name='holder'); print('held', flush=True); "
            "time.sleep(60)",
        ],
        env=_child_env(fake_gpus, "0"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SELECTMOE_GPUS", "0")
        with pytest.raises(ConfigError, match=rf"0 held by pid {holder.pid} holder"):
            acquire_gpus(1, timeout=0.2)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lease = acquire_gpus(1, timeout=5)
        assert lease.device_ids == ("0",) and lease.waited_seconds < 2
        lease.release()
    finally:
        holder.kill()
        holder.wait()


CONCURRENT_JOB = textwrap.dedent(
    """
    import json, sys, time
    from selectmoe.workflow.devices import gpu_environment
    import os
    job, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with gpu_environment(count, job_name=job) as lease:
        start = time.monotonic()
        time.sleep(0.3)
        end = time.monotonic()
        visible = os.environ["CUDA_VISIBLE_DEVICES"]
    with open(out, "w") as handle:
        json.dump({"job": job, "devices": visible.split(","), "start": start, "end": end,
                   "count": count}, handle)
    """
)


def test_concurrent_jobs_never_share_a_device(fake_gpus: Path, tmp_path: Path) -> None:
    """Ten jobs of 1 or 2 GPUs started at once over 3 fake devices."""
    counts = [1, 2, 1, 1, 2, 1, 2, 1, 1, 1]
    env = _child_env(fake_gpus, "0,1,2")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_JOB, f"job{i}", str(n), str(tmp_path / f"{i}.json")],
            env=env,
        )
        for i, n in enumerate(counts)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    records = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(len(counts))]
    for record in records:
        assert len(record["devices"]) == record["count"]
        assert set(record["devices"]) <= {"0", "1", "2"}
    _assert_no_shared_device(records)
    # the devices really were shared out: some jobs ran at the same time
    assert any(_intervals_overlap(a, b) for i, a in enumerate(records) for b in records[i + 1 :])
    assert {d for r in records for d in r["devices"]} == {"0", "1", "2"}


SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: expand("out/{i}.json", i=range(6))

    rule job:
        output: "out/{i}.json"
        resources: gpu=1
        script: "job.py"
    """
)

JOB_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    from selectmoe.workflow.runtime import run_job

    def work():
        start = time.monotonic()
        time.sleep(0.5)
        return {"job": snakemake.wildcards.i, "start": start, "end": time.monotonic(),
                "devices": os.environ["CUDA_VISIBLE_DEVICES"].split(",")}

    record = run_job(None, 1, work, gpus=snakemake.resources.gpu)
    with open(snakemake.output[0], "w") as handle:
        json.dump(record, handle)
    """
)


def test_snakemake_jobs_get_distinct_devices(fake_gpus: Path, tmp_path: Path) -> None:
    """Six 1-GPU rule jobs under `--cores 3 --resources gpu=2` on two fake devices."""
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(SNAKEFILE)
    (workdir / "job.py").write_text(JOB_SCRIPT)
    env = _child_env(fake_gpus, "0,1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "3", "--resources", "gpu=2", "--quiet"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((workdir / "out" / f"{i}.json").read_text()) for i in range(6)]
    assert all(len(r["devices"]) == 1 for r in records)
    _assert_no_shared_device(records)
    assert {r["devices"][0] for r in records} == {"0", "1"}
