"""Provenance records: digests, the record written beside an output, run_job's hook."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from selectmoe.workflow.provenance import comparable, digest, job_provenance, write_provenance
from selectmoe.workflow.runtime import run_job


def test_digest_of_file_directory_and_other(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_bytes(b"hello\n")
    assert digest(file) == {
        "path": str(file),
        "bytes": 6,
        "sha256": hashlib.sha256(b"hello\n").hexdigest(),
    }
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    first = digest(model)
    assert first["files"] == 2 and first["bytes"] == 12
    (model / "sub" / "w.bin").write_bytes(b"\x00" * 9 + b"\x01")  # same size, other content
    assert digest(model)["sha256"] != first["sha256"]
    (model / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    assert digest(model) == first
    (model / "sub" / "w.bin").rename(model / "sub" / "v.bin")  # same bytes, other name
    assert digest(model)["sha256"] != first["sha256"]
    assert digest("allenai/OLMoE-1B-7B-0125") == {
        "path": "allenai/OLMoE-1B-7B-0125",
        "exists": False,
    }


def test_record_holds_config_inputs_outputs_and_versions(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": 1}\n')
    output = tmp_path / "out.pt"
    output.write_bytes(b"weights")
    record = write_provenance(
        tmp_path / "out.pt.provenance.json",
        stage="warmup",
        inputs={"pool": [pool], "model": "hub/id"},
        outputs=[output],
        params={"settings": {"learning_rate": 1e-4, "loss": "mse"}, "fn": len},
        wildcards={"loss": "mse"},
        wall_time_s=1.23456,
    )
    on_disk = json.loads((tmp_path / "out.pt.provenance.json").read_text())
    assert on_disk == record
    assert record["stage"] == "warmup" and record["wildcards"] == {"loss": "mse"}
    assert record["params"]["settings"] == {"learning_rate": 1e-4, "loss": "mse"}
    assert record["inputs"]["pool"][0]["sha256"] == hashlib.sha256(pool.read_bytes()).hexdigest()
    assert record["inputs"]["model"] == [{"path": "hub/id", "exists": False}]
    assert record["outputs"][0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    software = record["software"]
    assert software["packages"]["torch"] and software["packages"]["selectmoe"]
    assert set(software["git"]) >= {"commit"}
    assert record["wall_time_s"] == 1.235
    assert set(comparable(record)) == set(record) - {"finished", "wall_time_s", "host"}


def _fake_job(tmp_path: Path, output: Path) -> SimpleNamespace:
    class Named(list):
        def __init__(self, named: dict, unnamed: list | None = None) -> None:
            super().__init__([*named.values(), *(unnamed or [])])
            self._named = named

        def items(self):
            return self._named.items()

        def __getattr__(self, name):
            return self._named[name]

    pool = tmp_path / "pool.jsonl"
    pool.write_text("x\n")
    extra = tmp_path / "model_dir"
    extra.mkdir()
    return SimpleNamespace(
        rule="score",
        input=Named({"pool": [str(pool)]}, [str(extra)]),
        output=Named({"data": str(output), "provenance": str(output) + ".provenance.json"}),
        params=Named({"batch_size": 8, "device": lambda wildcards: "cpu"}),
        wildcards=Named({"dataset": "cot"}),
        scriptdir=str(tmp_path / "workflow_scripts"),
    )


def test_run_job_writes_provenance_after_success_only(tmp_path: Path) -> None:
    output = tmp_path / "cot_router_data.pt"
    job = _fake_job(tmp_path, output)
    arguments = job_provenance(job)
    assert arguments["path"] == str(output) + ".provenance.json"
    assert arguments["inputs"]["other"] == [str(tmp_path / "model_dir")]
    assert arguments["params"] == {"batch_size": 8}  # functions are not configuration

    run_job(None, 1, lambda: output.write_bytes(b"data"), provenance=arguments)
    record = json.loads(Path(arguments["path"]).read_text())
    assert record["stage"] == "score" and record["wildcards"] == {"dataset": "cot"}
    assert record["outputs"] == [digest(output)]

    Path(arguments["path"]).unlink()
    from selectmoe.errors import DataError

    def fail():
        raise DataError("pool.jsonl line 3: invalid JSON")

    with pytest.raises(SystemExit) as exit_info:
        run_job(None, 1, fail, provenance=arguments)
    assert exit_info.value.code == 2
    assert not Path(arguments["path"]).exists()  # a failed job leaves no provenance


def test_no_provenance_output_means_none(tmp_path: Path) -> None:
    job = _fake_job(tmp_path, tmp_path / "x")
    del job.output._named["provenance"]
    assert job_provenance(job) is None
