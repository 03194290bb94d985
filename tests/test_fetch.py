"""Fetching the LESS pool: unpacking a local or downloaded archive, offline failure, the rule."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml
from test_workflow import PAPER_DATASETS, _copy_workflow, _job_counts, _snakemake

from selectmoe.data.fetch import fetch_less_pool
from selectmoe.data.pool import load_pool
from selectmoe.errors import DataError

PATTERN = "{dataset}/{dataset}_data.jsonl"
URL = "https://huggingface.co/datasets/princeton-nlp/less_data"
SIZES = {"cot": 5, "dolly": 4, "flan_v2": 6, "oasst1": 3}


def _jsonl(dataset: str, n: int) -> bytes:
    """``n`` LESS-format lines of ``dataset`` (one multi-turn, one with a system turn)."""
    lines = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{dataset} question {i} – ünïcode"}]
        messages.append({"role": "assistant", "content": f"answer {i}"})
        if i % 3 == 1:
            messages += [
                {"role": "user", "content": "and then?"},
                {"role": "assistant", "content": "then"},
            ]
        if i % 3 == 2:
            messages.insert(0, {"role": "system", "content": "be brief"})
        record = {"dataset": dataset, "id": f"{dataset}_{i}", "messages": messages}
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def _make_archive(path: Path, sizes: dict[str, int] = SIZES) -> dict[str, bytes]:
    """A small less-data.zip with the real layout: data/train/processed/..., data/eval/..."""
    contents = {d: _jsonl(d, n) for d, n in sizes.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for dataset, data in contents.items():
            zf.writestr(f"data/train/processed/{dataset}/{dataset}_data.jsonl", data)
        zf.writestr("data/eval/mmlu/dev/abstract_algebra_dev.csv", "q,a,b,c,d,A\n")
        zf.writestr("data/eval/tydiqa/dev/tydiqa-goldp-v1.1-dev.json", "{}")
        zf.writestr("data/eval/bbh/cot-prompts/boolean_expressions.txt", "prompt")
        zf.writestr("__MACOSX/data/train/processed/cot/._cot_data.jsonl", b"\x00junk")
    return contents


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    path = tmp_path / "less-data.zip"
    return path, _make_archive(path)


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_extracts_exactly_the_requested_datasets(
    tmp_path: Path, archive: tuple[Path, dict[str, bytes]]
) -> None:
    path, contents = archive
    pool = tmp_path / "pool"
    report = fetch_less_pool(pool, ["cot", "dolly", "oasst1"], PATTERN, archive=path)

    # only the requested training files; no eval data, no macOS junk, no temporary files
    assert _files(pool) == [
        "cot/cot_data.jsonl",
        "dolly/dolly_data.jsonl",
        "oasst1/oasst1_data.jsonl",
    ]
    for dataset in ("cot", "dolly", "oasst1"):
        target = pool / dataset / f"{dataset}_data.jsonl"
        assert target.read_bytes() == contents[dataset]
        entry = report["datasets"][dataset]
        assert entry == {
            "path": os.fspath(target),
            "status": "extracted",
            "member": f"data/train/processed/{dataset}/{dataset}_data.jsonl",
            "lines": SIZES[dataset],
            "bytes": len(contents[dataset]),
            "sha256": hashlib.sha256(contents[dataset]).hexdigest(),
        }
    assert report["total_lines"] == SIZES["cot"] + SIZES["dolly"] + SIZES["oasst1"]
    assert report["source"]["archive"] == os.fspath(path)
    assert report["source"]["url"] == URL
    json.dumps(report)  # the report is plain JSON

    # the extracted pool passes the pool reader (roles, ids, UTF-8)
    examples = load_pool(pool / d / f"{d}_data.jsonl" for d in ("cot", "dolly", "oasst1"))
    assert len(examples) == report["total_lines"]


def test_existing_files_are_kept_unless_overwrite(
    tmp_path: Path, archive: tuple[Path, dict[str, bytes]]
) -> None:
    path, contents = archive
    pool = tmp_path / "pool"
    own = pool / "cot" / "cot_data.jsonl"
    own.parent.mkdir(parents=True)
    own.write_bytes(_jsonl("cot", 2))
    report = fetch_less_pool(pool, ["cot", "dolly"], PATTERN, archive=path)
    assert own.read_bytes() == _jsonl("cot", 2)
    assert report["datasets"]["cot"]["status"] == "kept"
    assert report["datasets"]["cot"]["member"] is None
    assert report["datasets"]["cot"]["lines"] == 2
    assert report["datasets"]["dolly"]["status"] == "extracted"

    # all present: nothing is read, not even the archive
    again = fetch_less_pool(pool, ["cot", "dolly"], PATTERN, archive=tmp_path / "absent.zip")
    assert {e["status"] for e in again["datasets"].values()} == {"kept"}
    assert again["source"]["archive"] is None

    fetch_less_pool(pool, ["cot"], PATTERN, archive=path, overwrite=True)
    assert own.read_bytes() == contents["cot"]


def test_other_file_pattern_finds_the_less_layout(
    tmp_path: Path, archive: tuple[Path, dict[str, bytes]]
) -> None:
    path, contents = archive
    report = fetch_less_pool(tmp_path / "flat", ["dolly"], "{dataset}.jsonl", archive=path)
    assert (tmp_path / "flat" / "dolly.jsonl").read_bytes() == contents["dolly"]
    assert report["datasets"]["dolly"]["member"] == "data/train/processed/dolly/dolly_data.jsonl"


def test_dataset_missing_from_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "less-data.zip"
    _make_archive(path, {"cot": 2, "dolly": 2})
    pool = tmp_path / "pool"
    with pytest.raises(DataError) as info:
        fetch_less_pool(pool, ["cot", "dolly", "flan_v2", "oasst1"], PATTERN, archive=path)
    message = str(info.value)
    assert "\n" not in message
    assert "flan_v2, oasst1" in message
    assert "data/train/processed/cot/cot_data.jsonl" in message  # what the archive does hold
    assert not pool.exists()  # checked before anything is written


@pytest.mark.parametrize("cause", ["env", "connection", "timeout"])
def test_offline_without_archive_names_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    pool = tmp_path / "data" / "less" / "train" / "processed"
    if cause != "env":
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError

        monkeypatch.delenv("HF_HUB_OFFLINE")

        def unreachable(**kwargs: object) -> str:
            if cause == "timeout":  # the connection drops during the download
                raise TimeoutError("The read operation timed out")
            # what hf_hub_download raises when the Hub cannot be reached and nothing is cached
            raise LocalEntryNotFoundError("An error happened while trying to locate the file")

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(DataError) as info:
        # an empty cache: a copy of the archive in the user's Hub cache must not be found here
        fetch_less_pool(pool, PAPER_DATASETS, PATTERN, cache_dir=tmp_path / "hf_cache")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face Hub to download less-data.zip")
    assert ("HF_HUB_OFFLINE is set" in message) == (cause == "env")
    for dataset in PAPER_DATASETS:
        assert os.fspath(pool / dataset / f"{dataset}_data.jsonl") in message
    assert URL in message and "less-data.zip" in message and "data.fetch.archive" in message
    assert not pool.exists()


def test_download_goes_through_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: tuple[Path, dict[str, bytes]]
) -> None:
    import huggingface_hub

    path, contents = archive
    calls = []

    def download(**kwargs: object) -> str:
        calls.append(kwargs)
        return os.fspath(path)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    report = fetch_less_pool(tmp_path / "pool", ["oasst1"], PATTERN)
    assert calls[0]["repo_id"] == "princeton-nlp/less_data"
    assert calls[0]["filename"] == "less-data.zip"
    assert calls[0]["repo_type"] == "dataset"
    assert calls[0]["local_files_only"] is False
    assert report["datasets"]["oasst1"]["sha256"] == hashlib.sha256(contents["oasst1"]).hexdigest()


def test_corrupt_archive(tmp_path: Path, archive: tuple[Path, dict[str, bytes]]) -> None:
    pool = tmp_path / "pool"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=r"broken\.zip: not a readable zip archive"):
        fetch_less_pool(pool, ["cot"], PATTERN, archive=broken)

    # a damaged member (the central directory intact): no half-written pool file is left behind
    path, _ = archive
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data/train/processed/flan_v2/flan_v2_data.jsonl")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start, start + info.compress_size):
        data[i] ^= 0x5A
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged\.zip: not a readable zip archive"):
        fetch_less_pool(pool, ["flan_v2"], PATTERN, archive=damaged)
    assert not pool.exists() or _files(pool) == []

    with pytest.raises(DataError, match=r"archive .*absent\.zip does not exist"):
        fetch_less_pool(pool, ["cot"], PATTERN, archive=tmp_path / "absent.zip")


# --- the workflow: fetch_pool runs before validate_data only when pool files are missing ---


def _paper_pool(workflow_dir: Path) -> list[Path]:
    return [
        workflow_dir / "data/less/train/processed" / d / f"{d}_data.jsonl" for d in PAPER_DATASETS
    ]


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return _copy_workflow(tmp_path)


def test_dry_run_schedules_fetch_pool_when_the_pool_is_missing(workflow_dir: Path) -> None:
    args = ("-n", "--configfile", "config/paper.yaml", "--cores", "2")
    result = _snakemake(workflow_dir, *args, "results/paper/data/validate_data.json")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert _job_counts(output) == {"fetch_pool": 1, "validate_data": 1, "total": 2}
    assert "build_demo" not in output
    # validate_data reads what fetch_pool writes
    assert output.index("rule fetch_pool:") < output.index("rule validate_data:")

    whole = _snakemake(workflow_dir, *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert _job_counts(whole.stdout + whole.stderr)["fetch_pool"] == 1

    for path in _paper_pool(workflow_dir):
        path.parent.mkdir(parents=True)
        path.touch()
    present = _snakemake(workflow_dir, *args)
    output = present.stdout + present.stderr
    assert present.returncode == 0, output[-3000:]
    counts = _job_counts(output)
    assert "fetch_pool" not in counts and counts["validate_data"] == 1


@pytest.mark.slow
def test_offline_run_fails_at_once_and_an_archive_fills_the_pool(
    workflow_dir: Path, tmp_path: Path
) -> None:
    """A real run: offline it fails with the one-line message and keeps a user's own file;
    with data.fetch.archive it unpacks the missing files and validate_data passes."""
    pool = _paper_pool(workflow_dir)
    own = _jsonl("cot", 2)
    pool[0].parent.mkdir(parents=True)
    pool[0].write_bytes(own)
    target = "results/paper/data/validate_data.json"
    failed = _snakemake(workflow_dir, "--configfile", "config/paper.yaml", "--cores", "1", target)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "selectmoe: error: cannot reach the Hugging Face Hub" in output
    assert os.fspath(Path("data/less/train/processed/dolly/dolly_data.jsonl")) in output
    assert pool[0].read_bytes() == own and not any(p.exists() for p in pool[1:])

    archive = tmp_path / "less-data.zip"
    contents = _make_archive(archive)
    config = yaml.safe_load((workflow_dir / "config/paper.yaml").read_text())
    config["data"]["fetch"]["archive"] = os.fspath(archive)
    (workflow_dir / "local.yaml").write_text(yaml.safe_dump(config))
    done = _snakemake(workflow_dir, "--configfile", "local.yaml", "--cores", "1", target)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert pool[0].read_bytes() == own
    assert [p.read_bytes() for p in pool[1:]] == [contents[d] for d in PAPER_DATASETS[1:]]
    report = json.loads((workflow_dir / "results/paper/data/fetch_pool.json").read_text())
    assert [report["datasets"][d]["status"] for d in PAPER_DATASETS] == [
        "kept",
        "extracted",
        "extracted",
        "extracted",
    ]
    validated = json.loads((workflow_dir / target).read_text())
    assert validated["per_dataset"] == {"cot": 2, **{d: SIZES[d] for d in PAPER_DATASETS[1:]}}

    # the source setting is not a rerun trigger: back to the plain config, nothing to do
    again = _snakemake(
        workflow_dir, "-n", "--configfile", "config/paper.yaml", "--cores", "1", target
    )
    assert "Nothing to be done" in again.stdout + again.stderr
