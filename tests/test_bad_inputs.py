"""The bad-input matrix (issue #6): every bad input fails with one clear line and writes nothing.

Each case runs the real command line (``python -m selectmoe ...``) and checks the contract of
``selectmoe.errors``: exit status 2, the last line of stderr is the only ``selectmoe: error: ...``
line and names the file (and line or field) and the problem, no traceback, and no output file (nor
a temporary one) is left behind. Categories: pool files, router data, configs (package level, the
command line and one Snakemake dry-run) and missing models. No case loads a model: every check
runs before one would be loaded, which keeps the file fast.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from selectmoe.data.pool import MAX_LINE_BYTES, load_jsonl_examples
from selectmoe.errors import ConfigError, DataError
from selectmoe.workflow.config import load_schema, validate_config

REPO = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "selectmoe: error: "


# ----------------------------------------------------------------------------------------------
# helpers


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.fspath(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "selectmoe", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(
    result: subprocess.CompletedProcess, fragments: list[str], outputs: list[Path]
) -> str:
    """The error contract of the command line; returns the message (without the prefix)."""
    stderr = result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith(ERROR_PREFIX), stderr[-3000:]
    assert [line for line in lines if line.startswith(ERROR_PREFIX)] == [last]
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    for output in outputs:
        assert not output.exists(), f"{output} was written"
        # nor a temporary file or directory beside it (atomic writes use '.{name}.*.tmp')
        if output.parent.is_dir():
            leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(".")]
            assert not leftovers, leftovers
    return last.removeprefix(ERROR_PREFIX)


def _record(dataset: str, i: int, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "dataset": dataset,
        "id": f"{dataset}_{i}",
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    }
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


_DROP = object()


def _good_lines(dataset: str = "d", n: int = 2) -> list[bytes]:
    return [json.dumps(_record(dataset, i)).encode() for i in range(n)]


@dataclass
class Workspace:
    """Shared inputs of the cases (module scope, read-only)."""

    root: Path
    pool: dict[str, Path]  # dataset -> the tiny pool file (alpha, beta; 6 examples each)
    fake_model: Path  # a directory with a config.json but no weights

    def router_dir(self, name: str, **changes: Any) -> Path:
        """``{name}/alpha_router_data.pt``: valid router data of the alpha pool, then ``changes``
        (a value of ``_DROP`` removes the key)."""
        directory = self.root / "router" / name
        directory.mkdir(parents=True)
        payload: dict[str, Any] = {
            "quality_score": torch.zeros(6, 2),
            "moe_probs": torch.full((6, 2, 4), 0.25),
            "answer_loss": torch.linspace(1.0, 2.0, 6),
            "eos_loss": torch.linspace(0.5, 1.0, 6),
            "sample_ids": [f"alpha_{i}" for i in range(6)],
            "dataset": "alpha",
            "metadata": {},
        }
        for key, value in changes.items():
            if value is _DROP:
                payload.pop(key)
            else:
                payload[key] = value
        torch.save(payload, directory / "alpha_router_data.pt")
        return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_pool: dict[str, Path]) -> Workspace:
    root = tmp_path_factory.mktemp("bad_inputs")
    fake_model = root / "fake_model"
    fake_model.mkdir()
    (fake_model / "config.json").write_text("{}", encoding="utf-8")
    return Workspace(root=root, pool=tiny_pool, fake_model=fake_model)


@dataclass
class Case:
    """One bad input: ``setup(ws, tmp)`` writes what it needs under ``tmp`` and returns the
    command-line arguments; ``expect(ws, tmp)`` gives the fragments the error line must hold.
    Outputs are expected under ``tmp / "out"``, which must stay empty."""

    setup: Callable[[Workspace, Path], list[str]]
    expect: Callable[[Workspace, Path], list[str]]
    outputs: list[str] = field(default_factory=list)  # relative to tmp / "out"


# Each subprocess that imports transformers costs seconds: the module runs the command lines of
# the selected cases up front, two at a time, and each test checks its own result.
CASES: dict[str, Case] = {}  # "category/name" -> case (filled below, per category)
_SLOW_COMMANDS = ("convert", "finetune", "score")  # import transformers: started first


@pytest.fixture(scope="module")
def cli_results(
    request: pytest.FixtureRequest, workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """``"category/name" -> (the case's directory, its completed command)`` for every case that
    this session runs."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        category = getattr(item.function, "category", None)
        if item.module is sys.modules[__name__] and callspec and category:
            wanted.append(f"{category}/{callspec.params['name']}")
    prepared = []
    for key in wanted:
        tmp = tmp_path_factory.mktemp(key.replace("/", "-"))
        prepared.append((key, tmp, CASES[key].setup(workspace, tmp)))
    prepared.sort(key=lambda entry: entry[2][0] not in _SLOW_COMMANDS)
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        futures = {key: (tmp, pool.submit(_run_cli, args, tmp)) for key, tmp, args in prepared}
        return {key: (tmp, future.result()) for key, (tmp, future) in futures.items()}


def _check_case(key: str, workspace: Workspace, results: dict) -> str:
    tmp, result = results[key]
    case = CASES[key]
    out = tmp / "out"
    message = _assert_one_line_error(
        result, case.expect(workspace, tmp), [out / name for name in case.outputs]
    )
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    return message


def _category(name: str) -> Callable[[Callable], Callable]:
    """Mark a test as checking the cases ``{name}/...`` (see :func:`cli_results`)."""

    def mark(function: Callable) -> Callable:
        function.category = name  # type: ignore[attr-defined]
        return function

    return mark


# ----------------------------------------------------------------------------------------------
# pool files: `selectmoe validate-data FILES --report out/report.json`


def _pool_case(lines: list[bytes], fragments: list[str], *, raw: bytes | None = None) -> Case:
    """A pool file ``pool.jsonl`` of ``lines`` (or ``raw`` bytes); fragments use ``{path}``."""

    def setup(ws: Workspace, tmp: Path) -> list[str]:
        path = tmp / "pool.jsonl"
        path.write_bytes(raw if raw is not None else b"\n".join(lines) + b"\n")
        return ["validate-data", os.fspath(path), "--report", os.fspath(tmp / "out/report.json")]

    def expect(ws: Workspace, tmp: Path) -> list[str]:
        return [f.format(path=tmp / "pool.jsonl") for f in fragments]

    return Case(setup, expect, outputs=["report.json"])


def _bad_line(**changes: Any) -> list[bytes]:
    """Two good lines, a blank line (counted), then the bad one: line 4."""
    return [*_good_lines(), b"", json.dumps(_record("d", 9, **changes)).encode()]


POOL_CASES = {
    "invalid-json": _pool_case(
        [*_good_lines(), b'{"dataset": "d", "id": "d_9", "messages": ['],
        ["{path}:3: invalid JSON (", "fix the line"],
    ),
    "not-an-object": _pool_case(
        [*_good_lines(), b'["a", "list"]'], ["{path}:3: expected a JSON object, got list"]
    ),
    "missing-messages": _pool_case(
        _bad_line(messages=_DROP), ["{path}:4: missing field 'messages'", "add a non-empty list"]
    ),
    "empty-messages": _pool_case(
        _bad_line(messages=[]), ["{path}:4: field 'messages' is empty or not a list"]
    ),
    "messages-not-a-list": _pool_case(
        _bad_line(messages="hello"), ["{path}:4: field 'messages' is empty or not a list"]
    ),
    "bad-role": _pool_case(
        _bad_line(messages=[{"role": "bot", "content": "x"}]),
        ["{path}:4: messages[0].role is 'bot', not one of system, user, assistant"],
    ),
    "non-string-content": _pool_case(
        _bad_line(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]),
        ["{path}:4: messages[1].content is int, not a string", "make content a string"],
    ),
    "missing-id": _pool_case(_bad_line(id=_DROP), ["{path}:4: missing or empty field 'id'"]),
    "duplicate-id-in-file": _pool_case(
        [*_good_lines(), json.dumps(_record("d", 0)).encode()],
        ["{path}:3: duplicate id 'd_0' in dataset 'd' (first on line 1)", "make (dataset, id)"],
    ),
    "empty-file": _pool_case([], ["{path}: file is empty (no examples)"], raw=b""),
    "blank-lines-only": _pool_case([], ["{path}: file is empty (no examples)"], raw=b"\n  \n\n"),
    "non-utf8": _pool_case(
        [_good_lines()[0], _good_lines()[1].replace(b"question", b"qu\xffstion")],
        ["{path}:2: not valid UTF-8 (byte ", "re-encode the file as UTF-8"],
    ),
    "deeply-nested-json": _pool_case(
        [_good_lines()[0], b'{"messages": ' + b"[" * 100_000], ["{path}:2: invalid JSON ("]
    ),
}


def _missing_pool_file() -> Case:
    def setup(ws: Workspace, tmp: Path) -> list[str]:
        return ["validate-data", os.fspath(tmp / "nope.jsonl"), "--report", "out/report.json"]

    return Case(
        setup,
        lambda ws, tmp: [f"{tmp / 'nope.jsonl'}: file not found", "check the pool path"],
        outputs=["report.json"],
    )


def _duplicate_across_files() -> Case:
    def setup(ws: Workspace, tmp: Path) -> list[str]:
        first, second = tmp / "a.jsonl", tmp / "b.jsonl"
        first.write_bytes(b"\n".join(_good_lines(n=3)) + b"\n")
        second.write_bytes(
            json.dumps(_record("d", 5)).encode() + b"\n" + json.dumps(_record("d", 2)).encode()
        )
        return ["validate-data", os.fspath(first), os.fspath(second), "--report", "out/r.json"]

    def expect(ws: Workspace, tmp: Path) -> list[str]:
        return [
            f"{tmp / 'b.jsonl'}:2: duplicate id 'd_2' in dataset 'd' (also {tmp / 'a.jsonl'}:3)"
        ]

    return Case(setup, expect, outputs=["r.json"])


def _huge_line() -> Case:
    """A valid record of 50 MB on one line: refused without reading it whole."""

    def setup(ws: Workspace, tmp: Path) -> list[str]:
        path = tmp / "pool.jsonl"
        record = _record("d", 1, messages=[{"role": "user", "content": "@"}])
        head, tail = json.dumps(record).split("@")
        with path.open("wb") as handle:
            handle.write(_good_lines()[0] + b"\n" + head.encode())
            for _ in range(50):
                handle.write(b"x" * (1 << 20))
            handle.write(tail.encode() + b"\n")
        return ["validate-data", os.fspath(path), "--report", "out/report.json"]

    def expect(ws: Workspace, tmp: Path) -> list[str]:
        return [
            f"{tmp / 'pool.jsonl'}:2: line longer than the limit of 16 MiB",
            f"MAX_LINE_BYTES = {MAX_LINE_BYTES} bytes",
            "shorten or drop this example",
        ]

    return Case(setup, expect, outputs=["report.json"])


POOL_CASES["huge-line"] = _huge_line()
POOL_CASES["missing-file"] = _missing_pool_file()
POOL_CASES["duplicate-id-across-files"] = _duplicate_across_files()


def _finetune_bad_selection() -> Case:
    """``selectmoe finetune`` reads selected_data.jsonl with the same checks as the pool."""

    def setup(ws: Workspace, tmp: Path) -> list[str]:
        data = tmp / "selected_data.jsonl"
        data.write_bytes(_good_lines()[0] + b"\n" + b'{"id": "\xff"}\n')
        (tmp / "base").mkdir()  # exists: the data is checked before any model is loaded
        return [
            "finetune",
            "--base-model",
            "base",
            "--data",
            os.fspath(data),
            "--output",
            "out/adapter",
        ]

    return Case(
        setup,
        lambda ws, tmp: [f"{tmp / 'selected_data.jsonl'}:2: not valid UTF-8 (byte 8)"],
        outputs=["adapter"],
    )


POOL_CASES["finetune-selected-data-non-utf8"] = _finetune_bad_selection()


CASES.update({f"pool/{name}": case for name, case in POOL_CASES.items()})


@_category("pool")
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_bad_pool_file(name: str, workspace: Workspace, cli_results: dict) -> None:
    _check_case(f"pool/{name}", workspace, cli_results)


def test_line_limit_is_exact(tmp_path: Path) -> None:
    """A line of exactly MAX_LINE_BYTES (CRLF line ends too) is read; one byte more is refused."""

    def line_of(size: int, i: int) -> bytes:
        record = _record("d", i, messages=[{"role": "user", "content": "@"}])
        head, tail = json.dumps(record).encode().split(b"@")
        return head + b"x" * (size - len(head) - len(tail)) + tail

    path = tmp_path / "pool.jsonl"
    path.write_bytes(_good_lines()[0] + b"\r\n" + line_of(MAX_LINE_BYTES, 1) + b"\r\n")
    examples = load_jsonl_examples(path)
    assert [(e.id, e.line) for e in examples] == [("d_0", 1), ("d_1", 2)]
    path.write_bytes(_good_lines()[0] + b"\r\n" + line_of(MAX_LINE_BYTES + 1, 1) + b"\r\n")
    with pytest.raises(
        DataError, match=re.escape(f"{path}:2: ") + "line longer than the limit of 16 MiB"
    ):
        load_jsonl_examples(path)


# ----------------------------------------------------------------------------------------------
# router data: `selectmoe select --router-data DIR --pool ... --output out/selected_data.jsonl`


def _router_case(changes: dict[str, Any], fragments: list[str], *, method: str = "selectmoe"):
    """Router data of the alpha pool with ``changes``; fragments use ``{file}``."""

    def setup(ws: Workspace, tmp: Path) -> list[str]:
        directory = ws.router_dir(tmp.name, **changes)
        return [
            "select",
            "--router-data",
            os.fspath(directory),
            "--pool",
            os.fspath(ws.pool["alpha"]),
            "--output",
            "out/selected_data.jsonl",
            "--plots",
            "out/plots",
            "--percentage",
            "0.5",
            "--method",
            method,
        ]

    def expect(ws: Workspace, tmp: Path) -> list[str]:
        file = ws.root / "router" / tmp.name / "alpha_router_data.pt"
        return [f.format(file=file) for f in fragments]

    return Case(setup, expect, outputs=["selected_data.jsonl", "selection.json", "plots"])


def _nan_scores() -> torch.Tensor:
    scores = torch.zeros(6, 2)
    scores[3, 1] = float("nan")
    return scores


def _inf_probs() -> torch.Tensor:
    probs = torch.full((6, 2, 4), 0.25)
    probs[2, 0, 1] = float("inf")
    return probs


ROUTER_CASES = {
    "nan": _router_case(
        {"quality_score": _nan_scores()},
        [
            "{file}: quality_score has NaN or infinite values in 1 sample(s)",
            "(first: row 3, id 'alpha_3')",
            "re-run the score stage",
        ],
    ),
    "inf": _router_case(
        {"moe_probs": _inf_probs()},
        ["{file}: moe_probs has NaN or infinite values", "(first: row 2, id 'alpha_2')"],
        method="quality_topk",
    ),
    "wrong-ndim": _router_case(
        {"moe_probs": torch.full((6, 8), 0.125)},
        ["{file}: moe_probs must have shape [N, L, E], got (6, 8)", "re-run the score stage"],
    ),
    "shapes-disagree": _router_case(
        {"moe_probs": torch.full((5, 2, 4), 0.25)},
        ["{file}: shapes disagree: quality_score (6, 2), moe_probs (5, 2, 4), 6 sample_ids"],
    ),
    "missing-key": _router_case(
        {"moe_probs": _DROP}, ["{file}: missing key(s) ['moe_probs']; a router-data file holds"]
    ),
    "ids-not-in-pool": _router_case(
        {"sample_ids": [f"gamma_{i}" for i in range(6)]},
        [
            "{file}: 6 sample id(s) of dataset 'alpha' are not in the pool files",
            "(e.g. 'gamma_0', 'gamma_1', 'gamma_2')",
            "score the same pool you select from",
        ],
    ),
}


def _unreadable_router_file() -> Case:
    def setup(ws: Workspace, tmp: Path) -> list[str]:
        (tmp / "router").mkdir()
        (tmp / "router" / "alpha_router_data.pt").write_bytes(b"not a torch file\n")
        return [
            "select",
            "--router-data",
            "router",
            "--pool",
            os.fspath(ws.pool["alpha"]),
            "--output",
            "out/selected_data.jsonl",
            "--percentage",
            "0.5",
        ]

    return Case(
        setup,
        lambda ws, tmp: [
            "router/alpha_router_data.pt: cannot be read as a router-data file (not written by "
            "torch.save: it starts with b'not '); re-run the score stage for this dataset",
        ],
        outputs=["selected_data.jsonl", "selection.json"],
    )


ROUTER_CASES["unreadable-file"] = _unreadable_router_file()


CASES.update({f"router/{name}": case for name, case in ROUTER_CASES.items()})


@_category("router")
@pytest.mark.parametrize("name", list(ROUTER_CASES))
def test_bad_router_data(name: str, workspace: Workspace, cli_results: dict) -> None:
    _check_case(f"router/{name}", workspace, cli_results)


# ----------------------------------------------------------------------------------------------
# configs: package level (config/schema.yaml), the command line, one Snakemake dry-run


def _set(section: str, key: str, value: Any) -> Callable[[dict], None]:
    return lambda config: config[section].__setitem__(key, value)


def _drop(section: str | None, key: str) -> Callable[[dict], None]:
    return lambda config: (config[section] if section else config).pop(key)


CONFIG_CASES = {
    # wrong type
    "type-integer": (
        _set("warmup", "epochs", "two"),
        "config key warmup.epochs: 'two' has the wrong type; expected integer",
    ),
    "type-integer-or-null": (
        _set("finetune", "max_steps", 2.5),
        "config key finetune.max_steps: 2.5 has the wrong type; expected integer or null",
    ),
    "type-boolean": (
        _set("warmup", "sample_wise_averaging", "yes"),
        "config key warmup.sample_wise_averaging: 'yes' has the wrong type; expected boolean",
    ),
    "type-section": (
        lambda config: config.__setitem__("scoring", [16]),
        "config key scoring: [16] has the wrong type; expected object",
    ),
    # out of range
    "range-exclusive-and-max": (
        _set("warmup", "subset_ratio", 1.5),
        "config key warmup.subset_ratio: 1.5 is out of range; allowed: values > 0 and <= 1",
    ),
    "range-minimum": (
        _set("finetune", "lora_r", 0),
        "config key finetune.lora_r: 0 is out of range; allowed: values >= 1",
    ),
    "range-in-list": (
        _set("selection", "percentages", [0.1, 2]),
        "config key selection.percentages[1]: 2 is out of range; allowed: values > 0 and <= 1",
    ),
    "range-in-mapping": (
        _set("evaluation", "num_fewshot", {"demo_qa": -1}),
        "config key evaluation.num_fewshot.demo_qa: -1 is out of range; allowed: values >= 0",
    ),
    # unknown key
    "unknown-key": (
        lambda config: config["warmup"].__setitem__(
            "lerning_rate", config["warmup"].pop("learning_rate")
        ),
        "config key warmup: unknown key(s) lerning_rate; allowed keys: beta_target_mean, ",
    ),
    "unknown-top-level-key": (
        lambda config: config.__setitem__("selecton", {}),
        "config key (top level): unknown key(s) selecton; allowed keys: base_model, data, demo, ",
    ),
    # missing required key
    "missing-required": (
        _drop("selection", "methods"),
        "config key selection.methods: missing (required); add it (see config/config.yaml)",
    ),
    "missing-required-section": (
        _drop(None, "targets"),
        "config key targets: missing (required); add it (see config/config.yaml)",
    ),
    "missing-required-several": (
        lambda config: config["selection"].clear(),
        "config keys selection.loss_types, selection.percentages, selection.methods: missing "
        "(required); add them",
    ),
    # bad enum
    "enum": (
        _set("scoring", "dtype", "float64"),
        "config key scoring.dtype: 'float64' is not allowed; allowed values: float32, bfloat16, "
        "float16",
    ),
    "pattern-in-list": (
        # names are checked against the registries after the plugins load (test_config_cli.py)
        _set("selection", "loss_types", ["sigmoid", "hinge loss"]),
        "config key selection.loss_types[1]: 'hinge loss' does not match",
    ),
    "enum-nested": (
        lambda config: config["selection"]["clustering_params"].__setitem__(
            "gpu_allocation_strategy", "greedy"
        ),
        "config key selection.clustering_params.gpu_allocation_strategy: 'greedy' is not "
        "allowed; allowed values: round_robin, balanced",
    ),
}


@pytest.fixture(scope="module")
def demo_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config/config.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema(REPO / "config/schema.yaml")


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_bad_config_value(name: str, demo_config: dict, schema: dict) -> None:
    change, expected = CONFIG_CASES[name]
    config = copy.deepcopy(demo_config)
    change(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration: " + expected), message
    assert message.count("config key") == 1, message  # one problem, reported once


def _unknown_clustering_param() -> Case:
    def setup(ws: Workspace, tmp: Path) -> list[str]:
        directory = ws.router_dir(tmp.name)
        return [
            "select",
            "--router-data",
            os.fspath(directory),
            "--pool",
            os.fspath(ws.pool["alpha"]),
            "--output",
            "out/selected_data.jsonl",
            "--percentage",
            "0.5",
            "--set",
            "n_clusters=3",
        ]

    return Case(
        setup,
        lambda ws, tmp: ["unknown clustering_params for kmeans: ['n_clusters']; valid: ", "'k'"],
        outputs=["selected_data.jsonl", "selection.json"],
    )


CLI_CONFIG_CASES = {"select-unknown-clustering-param": _unknown_clustering_param()}
CASES.update({f"config/{name}": case for name, case in CLI_CONFIG_CASES.items()})


@_category("config")
@pytest.mark.parametrize("name", list(CLI_CONFIG_CASES))
def test_bad_setting_on_the_command_line(name: str, workspace: Workspace, cli_results) -> None:
    _check_case(f"config/{name}", workspace, cli_results)


def test_bad_configfile_fails_the_snakemake_dry_run(tmp_path: Path) -> None:
    for name in ("Snakefile", "rules", "config", "workflow_scripts", "report", "profiles", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.exists():
            shutil.copy2(source, tmp_path / name)
    config = yaml.safe_load((tmp_path / "config/config.yaml").read_text(encoding="utf-8"))
    config["scoring"]["dtype"] = "float64"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "bad.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    expected = (
        "invalid configuration: config key scoring.dtype: 'float64' is not allowed; allowed "
        "values: float32, bfloat16, float16"
    )
    assert expected in output.splitlines(), output[-3000:]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------------------------
# missing models


def _model_case(args: Callable[[Workspace, Path], list[str]], fragments, outputs) -> Case:
    return Case(args, lambda ws, tmp: [f.format(tmp=tmp) for f in fragments], outputs=outputs)


MODEL_CASES = {
    "convert-missing-source": _model_case(
        lambda ws, tmp: ["convert", "--source", os.fspath(tmp / "olmoe"), "--output", "out/conv"],
        ["{tmp}/olmoe: model directory not found", "fix the path"],
        ["conv"],
    ),
    "finetune-missing-base-model": _model_case(
        lambda ws, tmp: [
            "finetune",
            "--base-model",
            os.fspath(tmp / "llama"),
            "--data",
            os.fspath(ws.pool["alpha"]),
            "--output",
            "out/adapter",
        ],
        ["{tmp}/llama: target model not found", "fix the path"],
        ["adapter"],
    ),
    "evaluate-missing-adapter": _model_case(
        lambda ws, tmp: [
            "evaluate",
            "--base-model",
            os.fspath(ws.fake_model),
            "--adapter",
            os.fspath(tmp / "adapter"),
            "--tasks",
            "demo_qa",
            "--output",
            "out/results.json",
        ],
        ["adapter directory not found: {tmp}/adapter; build or train it first"],
        ["results.json"],
    ),
    "evaluate-missing-base-model": _model_case(
        lambda ws, tmp: [
            "evaluate",
            "--base-model",
            os.fspath(tmp / "llama"),
            "--tasks",
            "demo_qa",
            "--output",
            "out/results.json",
        ],
        ["pretrained model directory not found: {tmp}/llama"],
        ["results.json"],
    ),
    "evaluate-hub-model-offline-not-cached": _model_case(
        lambda ws, tmp: [
            "evaluate",
            "--base-model",
            "no-such-org/no-such-model",
            "--tasks",
            "demo_qa",
            "--output",
            "out/results.json",
        ],
        [
            "no-such-org/no-such-model: cannot load a model config for the pretrained model",
            "set HF_HUB_OFFLINE=0 when online",
        ],
        ["results.json"],
    ),
    "finetune-directory-without-config": _model_case(
        lambda ws, tmp: [
            "finetune",
            "--base-model",
            os.fspath(ws.pool["alpha"].parent),
            "--data",
            os.fspath(ws.pool["alpha"]),
            "--output",
            "out/adapter",
        ],
        ["cannot load a model config for the target model", "give a local model directory"],
        ["adapter"],
    ),
    "score-missing-weights": _model_case(
        lambda ws, tmp: [
            "score",
            "--model",
            os.fspath(ws.fake_model),
            "--weights",
            os.fspath(tmp / "full_rank_weights.pt"),
            "--pool",
            os.fspath(ws.pool["alpha"]),
            "--dataset",
            "alpha",
            "--output",
            "out/alpha_router_data.pt",
        ],
        ["{tmp}/full_rank_weights.pt: warmup weights not found; run the warmup stage first"],
        ["alpha_router_data.pt"],
    ),
    "score-missing-model": _model_case(
        lambda ws, tmp: [
            "score",
            "--model",
            os.fspath(tmp / "converted"),
            "--weights",
            os.fspath(tmp / "full_rank_weights.pt"),
            "--pool",
            os.fspath(ws.pool["alpha"]),
            "--dataset",
            "alpha",
            "--output",
            "out/alpha_router_data.pt",
        ],
        ["{tmp}/converted: converted model not found; run the convert stage first"],
        ["alpha_router_data.pt"],
    ),
}


CASES.update({f"model/{name}": case for name, case in MODEL_CASES.items()})


@_category("model")
@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_missing_model(name: str, workspace: Workspace, cli_results: dict) -> None:
    _check_case(f"model/{name}", workspace, cli_results)
