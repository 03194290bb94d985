"""Stage 4: evaluate a target model (optionally with a LoRA adapter) with lm-eval.

:func:`run_lm_eval` runs lm-eval's ``hf`` model with ``pretrained=<base>`` and, for a finetuned
point, ``peft=<adapter dir>``, on built-in tasks and/or local task YAMLs, and writes one results
JSON per sweep point. :func:`read_task_metrics` reads the per-task metrics back for the summary.

Pinned to lm-eval 0.4.13 and transformers 5.x; the quirks handled here (see the comments at each
place) are:

* lm-eval's ``hf`` model shrinks the embedding matrix to ``len(tokenizer)`` whenever a PEFT adapter
  is given (lm-eval issue #2748). For models whose embedding is padded beyond the tokenizer
  (Qwen2.5: 151936 rows, 151665 tokens) that makes the adapter run differ from the base run for
  reasons that have nothing to do with the adapter. :class:`_SelectMoeHFLM` only ever *grows* it.
* Building a :class:`lm_eval.tasks.TaskManager` over lm-eval's ~15,000 built-in task YAMLs takes
  several seconds; local tasks are first looked up in ``include_path`` alone.
* ``dataset_kwargs.data_files`` of a local task resolve against the working directory, not the
  YAML's folder; a missing file is reported before any model is loaded.
* The raw results hold ``torch.dtype`` objects, callables, tuples and NaN; they are converted to
  strict JSON, and per-sample logs go to an optional separate JSONL file, never the results JSON.
* lm-eval asks the Hub for a model's commit sha; local paths are passed absolute so that a path
  such as ``demo/target`` is never mistaken for a Hub repository id.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from selectmoe.data.lm_eval_results import evaluation_contracts, load_results, read_task_metrics
from selectmoe.errors import EvaluationError, ModelError
from selectmoe.io import atomic_write_json, atomic_write_jsonl
from selectmoe.schema import section_defaults

__all__ = [
    "evaluate_adapters",
    "load_results",
    "read_task_metrics",
    "run_lm_eval",
    "split_at_character",
]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_MAX_SUGGESTIONS = 10


# --------------------------------------------------------------------------- public API


def run_lm_eval(
    *,
    pretrained: str,
    adapter: str | None,
    tasks: Sequence[str],
    output_json: str | os.PathLike[str],
    samples_jsonl: str | os.PathLike[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``pretrained`` (plus an optional PEFT ``adapter``) with lm-eval; write the results.

    One run of :func:`evaluate_adapters`; ``options`` are its keyword arguments.

    Examples
    --------
    >>> run_lm_eval(pretrained="results/demo/target", adapter="results/lora/demo/selectmoe",
    ...             tasks=["demo_qa"], include_path="results/demo/tasks",
    ...             output_json="results/eval/demo.json")  # doctest: +SKIP
    """
    return evaluate_adapters(
        pretrained=pretrained,
        adapters=[adapter],
        tasks=tasks,
        output_jsons=[output_json],
        samples_jsonls=[samples_jsonl],
        **options,
    )[0]


#: The config's evaluation defaults (``config/schema.yaml``), for callers without a config.
_EVALUATION_DEFAULTS = section_defaults("evaluation")


def evaluate_adapters(
    *,
    pretrained: str,
    adapters: Sequence[str | os.PathLike[str] | None],
    tasks: Sequence[str],
    output_jsons: Sequence[str | os.PathLike[str]],
    samples_jsonls: Sequence[str | os.PathLike[str] | None] | None = None,
    include_path: str | os.PathLike[str] | None = _EVALUATION_DEFAULTS["include_path"],
    num_fewshot: int | Mapping[str, int | None] | None = _EVALUATION_DEFAULTS["num_fewshot"],
    batch_size: int | str = _EVALUATION_DEFAULTS["batch_size"],
    limit: int | float | None = _EVALUATION_DEFAULTS["limit"],
    device: str = _EVALUATION_DEFAULTS["device"],
    dtype: str = _EVALUATION_DEFAULTS["dtype"],
    seed: int = _EVALUATION_DEFAULTS["seed"],
    trust_remote_code: bool = False,
    add_bos_token: bool | None = None,
    apply_chat_template: bool = False,
    bootstrap_iters: int = 100_000,
) -> list[dict[str, Any]]:
    """Evaluate ``pretrained`` with each of several PEFT adapters; the base model is loaded once.

    Each adapter is attached to the loaded base model, evaluated, and removed again (peft's
    ``unload``), so that the next one starts from the same weights; the results equal those of
    separate runs (tested). Adapters that ship their own tokenizer get a model of their own.

    Parameters
    ----------
    pretrained : str
        Base model: a local directory (``config.json`` + weights + tokenizer) or a Hub id.
    adapters : sequence of str or None
        PEFT adapter directories (``adapter_config.json``) or Hub ids; ``None`` evaluates the
        base model alone. When an adapter directory also holds a tokenizer, that tokenizer is used
        (finetuning may have added tokens).
    tasks : sequence of str
        lm-eval task, group or tag names (or paths to task YAML files), e.g. ``["arc_easy"]``.
        Duplicates are dropped.
    output_jsons : sequence of path
        Where each run's results JSON goes (written atomically), one per adapter.
    samples_jsonls : sequence of path or None, optional
        Per run, also write one JSON line per evaluated document (task, doc id, target, the
        model's filtered responses such as the per-choice log-likelihoods, and the per-document
        metrics): what the summary's intervals and paired comparisons are computed from.
    include_path : path, optional
        Directory of local task YAMLs, searched before lm-eval's built-in tasks.
    num_fewshot : int or mapping, optional
        Overrides every task's few-shot count (lm-eval keeps an explicit ``0`` in a task YAML);
        ``None`` keeps the tasks' own defaults. A mapping ``{task: count}`` sets counts per task
        (e.g. ``{"mmlu": 5}``); tasks it does not name keep their defaults. lm-eval runs once per
        distinct count, on the same loaded model.
    batch_size : int or str, default 16
        Positive integer, or ``"auto"`` / ``"auto:N"`` for lm-eval's batch-size search.
    limit : int or float, optional
        At most ``limit`` documents per task (an int >= 1), or that share of them (a float in
        (0, 1)); only for quick checks, as lm-eval warns.
    device : str, default "cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    dtype : {"float32", "bfloat16", "float16", "auto"}, default "float32"
        Weight dtype; ``"auto"`` takes the dtype recorded in the model config.
    seed : int, default 42
        Seed for Python, NumPy, torch and the few-shot sampler (all four of lm-eval's seeds),
        set again before every run.
    trust_remote_code : bool, default False
        Allow custom modelling code from the model directory.
    add_bos_token : bool, optional
        Force the tokenizer to add (``True``) or not add (``False``) its BOS token; ``None``
        keeps the tokenizer's own behaviour.
    apply_chat_template : bool, default False
        Format prompts with the tokenizer's chat template; the tokenizer must have one.
    bootstrap_iters : int, default 100000
        Bootstrap iterations for lm-eval's stderr of non-mean metrics; ``0`` skips them.

    Returns
    -------
    list of dict
        Per run, the JSON-ready results that were written: lm-eval's ``results`` (per task, e.g.
        ``"acc,none"``, ``"acc_stderr,none"``), ``groups``, ``group_subtasks``, ``configs``,
        ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, the run ``config``, and a
        ``selectmoe`` block (pretrained, adapter, tasks, num_fewshot, batch_size, limit, seed,
        device, dtype, wall_time_s). Empty dicts, and nothing written, on a non-zero rank of a
        multi-process (``accelerate launch``) run.

    Raises
    ------
    EvaluationError
        On a bad option, a missing model, adapter, include path or data file, an unknown task
        (the message lists the available tasks with similar names), a tokenizer without a chat
        template when ``apply_chat_template`` is set, or lists of different lengths.
    """
    from selectmoe.training.distributed import distributed_info

    started = time.perf_counter()
    samples_list = list(samples_jsonls) if samples_jsonls is not None else [None] * len(adapters)
    if not adapters or len(output_jsons) != len(adapters) or len(samples_list) != len(adapters):
        raise EvaluationError(
            f"give one output (and samples path) per adapter: {len(adapters)} adapter(s), "
            f"{len(output_jsons)} output(s), {len(samples_list)} samples path(s)"
        )
    task_names = _validate_tasks(tasks)
    if isinstance(num_fewshot, Mapping):
        unknown = sorted(set(num_fewshot) - set(task_names))
        if unknown:
            raise EvaluationError(
                f"num_fewshot names task(s) {', '.join(unknown)} that are not evaluated; "
                f"the tasks are {', '.join(task_names)}"
            )
    _validate_options(
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        dtype=dtype,
        seed=seed,
        bootstrap_iters=bootstrap_iters,
    )
    _validate_device(device)
    if isinstance(limit, float) and limit >= 1:
        limit = int(limit)  # a count given as float (e.g. from the command line)
    pretrained_arg = _resolve_model_path(pretrained, role="pretrained model", marker="config.json")
    adapter_args = [
        None
        if adapter is None
        else _resolve_model_path(os.fspath(adapter), role="adapter", marker="adapter_config.json")
        for adapter in adapters
    ]
    for adapter in adapter_args:
        _require_finite_adapter(adapter)
    include_dir = None
    if include_path is not None:
        include_dir = Path(include_path).expanduser()
        if not include_dir.is_dir():
            raise EvaluationError(
                f"task include_path {os.fspath(include_path)!r} is not a directory; "
                "point it at the folder holding the local task YAMLs"
            )

    task_manager = _build_task_manager(task_names, include_dir)
    _check_local_data_files(task_names, task_manager.task_index)
    # what each requested name stands for: itself, or a group's / tag's tasks (lm-eval writes a
    # group's members in group_subtasks, a tag's nowhere); the summary pools them
    members = {
        task: [name for name, _ in _task_configs(task, task_manager.task_index)] or [task]
        for task in task_names
    }

    tokenizer_args = [_adapter_tokenizer(adapter) for adapter in adapter_args]
    if apply_chat_template:
        for tokenizer_arg in {t or pretrained_arg for t in tokenizer_args}:
            _require_chat_template(tokenizer_arg, trust_remote_code)

    base_args: dict[str, Any] = {
        "pretrained": pretrained_arg,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
    }
    if add_bos_token is not None:
        base_args["add_bos_token"] = add_bos_token
    run_args = []
    for adapter_arg, tokenizer_arg in zip(adapter_args, tokenizer_args, strict=True):
        model_args = dict(base_args)
        if adapter_arg is not None:
            model_args["peft"] = adapter_arg
        if tokenizer_arg is not None:
            model_args["tokenizer"] = tokenizer_arg
        run_args.append(model_args)

    logger.info(
        "lm-eval: pretrained=%s adapters=%s tasks=%s num_fewshot=%s limit=%s seed=%d device=%s",
        pretrained_arg,
        adapter_args,
        ",".join(task_names),
        num_fewshot,
        limit,
        seed,
        device,
    )
    raw_runs = _simple_evaluate(
        run_args=run_args,
        task_manager=task_manager,
        tasks=task_names,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        device=device,
        seed=seed,
        apply_chat_template=apply_chat_template,
        bootstrap_iters=bootstrap_iters,
        log_samples=any(path is not None for path in samples_list),
    )
    if not distributed_info().is_main or any(raw is None for raw in raw_runs):
        # Non-zero ranks of a data-parallel run get nothing back (lm-eval gathers the results
        # on rank 0); without GPUs every process evaluates everything and only rank 0 writes.
        return [{} for _ in adapters]

    outputs = []
    for adapter, model_args, raw, output_json, samples_jsonl, wall_time in zip(
        adapters,
        run_args,
        raw_runs,
        output_jsons,
        samples_list,
        _run_times(raw_runs, started),
        strict=True,
    ):
        output = _assemble_output(
            raw,
            selectmoe={
                "pretrained": pretrained,
                "adapter": None if adapter is None else os.fspath(adapter),
                "tasks": task_names,
                "task_members": members,
                "include_path": None if include_path is None else os.fspath(include_path),
                "num_fewshot": num_fewshot,
                "batch_size": batch_size,
                "limit": limit,
                "seed": seed,
                "device": device,
                "dtype": dtype,
                "add_bos_token": add_bos_token,
                "apply_chat_template": apply_chat_template,
                "wall_time_s": round(wall_time, 3),
            },
            model_args=model_args,
        )
        if samples_jsonl is not None:
            atomic_write_jsonl(samples_jsonl, _sample_records(raw.get("samples") or {}))
        atomic_write_json(output_json, output)
        for task, metrics in read_task_metrics(output).items():
            logger.info(
                "%s: %s",
                task,
                ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()),
            )
        outputs.append(output)
    return outputs


def _run_times(raw_runs: Sequence[Mapping[str, Any]], started: float) -> list[float]:
    """Wall time of each run: the first includes loading; each later one its own evaluation."""
    times = [float(raw.get("_selectmoe_seconds", 0.0)) for raw in raw_runs]
    if times:
        times[0] = max(times[0], time.perf_counter() - started - sum(times[1:]))
    return times


# --------------------------------------------------------------------------- validation


def _validate_tasks(tasks: Sequence[str]) -> list[str]:
    """Return the task names in order without duplicates; reject an empty or malformed list."""
    if isinstance(tasks, str | bytes):
        raise EvaluationError(
            f"tasks must be a list of task names, got the string {tasks!r}; "
            f"write [{tasks!r}] (or split a comma-separated string first)"
        )
    names: list[str] = []
    for task in tasks:
        if not isinstance(task, str) or not task.strip():
            raise EvaluationError(f"task names must be non-empty strings, got {task!r}")
        if task in names:
            logger.warning("task %r listed twice; evaluating it once", task)
            continue
        names.append(task)
    if not names:
        raise EvaluationError("no evaluation tasks given; list at least one lm-eval task name")
    return names


def _validate_options(
    *,
    batch_size: int | str,
    limit: int | float | None,
    num_fewshot: int | Mapping[str, int | None] | None,
    dtype: str,
    seed: int,
    bootstrap_iters: int,
) -> None:
    """Check option types and ranges before anything is loaded."""
    if isinstance(batch_size, str):
        head, _, tail = batch_size.partition(":")
        ok = batch_size.isdigit() and int(batch_size) > 0
        ok = ok or (head == "auto" and (not tail or tail.isdigit()))
        if not ok:
            raise EvaluationError(
                f"batch_size must be a positive integer, 'auto' or 'auto:N', got {batch_size!r}"
            )
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(
            f"batch_size must be a positive integer or 'auto', got {batch_size!r}"
        )
    if limit is not None:
        is_number = isinstance(limit, int | float) and not isinstance(limit, bool)
        # lm-eval reads a limit below 1 as a share of the documents and truncates one above 1.
        if not is_number or not math.isfinite(limit) or limit <= 0:
            raise EvaluationError(f"limit must be a positive number or None, got {limit!r}")
        if limit >= 1 and limit != int(limit):
            raise EvaluationError(
                f"limit must be an integer count >= 1 or a share in (0, 1), got {limit!r}"
            )
    counts = dict(num_fewshot) if isinstance(num_fewshot, Mapping) else {"": num_fewshot}
    for task, count in counts.items():
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            where = f"num_fewshot[{task!r}]" if task else "num_fewshot"
            raise EvaluationError(
                f"{where} must be an integer >= 0 or None, got {count!r}; give one count for "
                "every task, or a mapping task -> count (tasks not named keep their default)"
            )
    if dtype not in _DTYPES:
        raise EvaluationError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EvaluationError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(bootstrap_iters, bool) or not isinstance(bootstrap_iters, int):
        raise EvaluationError(f"bootstrap_iters must be an integer >= 0, got {bootstrap_iters!r}")
    if bootstrap_iters < 0:
        raise EvaluationError(f"bootstrap_iters must be an integer >= 0, got {bootstrap_iters!r}")


def _validate_device(device: str) -> None:
    """Reject devices that are not there: lm-eval would silently fall back to another one."""
    if not isinstance(device, str) or not device:
        raise EvaluationError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise EvaluationError(
                f"device {device!r} requested but CUDA is not available; use device='cpu'"
            )
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise EvaluationError(
                f"device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) "
                "are visible (check CUDA_VISIBLE_DEVICES)"
            )
        return
    if kind == "mps" and index in ("", "0"):
        if not torch.backends.mps.is_available():
            raise EvaluationError(f"device {device!r} requested but MPS is not available")
        return
    raise EvaluationError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")


def _looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a Hub id like ``org/model``."""
    if Path(name).expanduser().exists():
        return True
    # Hub ids are "model" or "org/model"; anything else with a separator is a path.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name


def _resolve_model_path(name: str | os.PathLike[str], *, role: str, marker: str) -> str:
    """Return an absolute directory path for a local model/adapter, or the Hub id unchanged."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise EvaluationError(f"{role} must be a directory path or Hub id, got {name!r}")
    if not _looks_local(name):
        if marker == "config.json":  # a model on the Hub (adapters have no config.json)
            from selectmoe.model.source import require_model_source

            try:
                require_model_source(name, what=role)
            except ModelError as error:
                raise EvaluationError(str(error)) from None
        return name
    path = Path(name).expanduser()
    if not path.is_dir():
        raise EvaluationError(f"{role} directory not found: {name}; build or train it first")
    if not (path / marker).is_file():
        raise EvaluationError(
            f"{role} directory {name} has no {marker}; is it a complete "
            f"{'PEFT adapter' if role == 'adapter' else 'transformers model'} directory?"
        )
    # Absolute, so that lm-eval's Hub look-up of the commit sha can never take it for a repo id.
    return str(path.resolve())


def _require_finite_adapter(adapter: str | None) -> None:
    """Refuse a local adapter whose weights hold NaN or infinite values (one line)."""
    if adapter is None:
        return
    weights = Path(adapter) / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        from selectmoe.model.source import require_finite_weights

        require_finite_weights(
            load_file(weights), path=weights, rerun="finetune", error=EvaluationError
        )


def _adapter_tokenizer(adapter: str | None) -> str | None:
    """The adapter directory when it ships its own tokenizer (finetuning may add tokens)."""
    if adapter is None or not Path(adapter).is_dir():
        return None
    if any(
        (Path(adapter) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        logger.info("using the tokenizer saved with the adapter in %s", adapter)
        return adapter
    return None


def _require_chat_template(tokenizer_source: str, trust_remote_code: bool) -> None:
    """Fail early when a chat template is requested but the tokenizer has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise EvaluationError(
            f"apply_chat_template is set but the tokenizer in {tokenizer_source} has no chat "
            "template; set apply_chat_template to false or add a template to the tokenizer"
        )


# --------------------------------------------------------------------------- tasks


def _build_task_manager(tasks: Sequence[str], include_dir: Path | None) -> Any:
    """Return a TaskManager that knows every task in ``tasks``, or raise listing similar names."""
    from lm_eval.tasks import TaskManager

    if include_dir is not None:
        # Indexing lm-eval's built-in tasks costs seconds; local tasks rarely need it.
        local = TaskManager(include_path=str(include_dir), include_defaults=False)
        if all(_is_resolvable(task, local.task_index) for task in tasks):
            return local
    manager = TaskManager(include_path=None if include_dir is None else str(include_dir))
    unknown = [task for task in tasks if not _is_resolvable(task, manager.task_index)]
    if unknown:
        where = "lm-eval's built-in tasks" + (
            f" and include_path {include_dir}" if include_dir is not None else ""
        )
        parts = []
        for task in unknown:
            similar = _similar_names(task, manager.all_tasks)
            hint = f"similar: {', '.join(similar)}" if similar else "no similar task name"
            parts.append(f"{task!r} ({hint})")
        raise EvaluationError(f"unknown lm-eval task {'; '.join(parts)}; searched {where}")
    return manager


def _is_resolvable(
    name: str, index: Mapping[str, Any], _seen: frozenset[str] = frozenset()
) -> bool:
    """Whether lm-eval can build ``name`` (a group also needs each of its member tasks)."""
    entry = index.get(name)
    if entry is None:
        return name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()
    cfg = entry.cfg or {}
    members = cfg.get("task") if "group" in cfg else None
    if not isinstance(members, list) or name in _seen:
        return True
    for member in members:
        # Inline member definitions (dicts) are built from the group file itself.
        if isinstance(member, str) and not _is_resolvable(member, index, _seen | {name}):
            return False
    return True


def _similar_names(name: str, candidates: Sequence[str]) -> list[str]:
    """Candidate task names close to ``name``: close spellings first, then containing names."""
    close = difflib.get_close_matches(name, candidates, n=_MAX_SUGGESTIONS, cutoff=0.6)
    needle = name.lower()
    containing = sorted(c for c in candidates if needle in c.lower() and c not in close)
    return (close + containing)[:_MAX_SUGGESTIONS]


def _task_configs(
    name: str, index: Mapping[str, Any], _seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Any]]:
    """Yield ``(task name, index entry)`` for ``name`` and, for a group or tag, its members."""
    entry = index.get(name)
    if entry is None or name in _seen:
        return
    cfg = entry.cfg or {}
    members: list[Any] = []
    if "group" in cfg and isinstance(cfg.get("task"), list):
        members = cfg["task"]
    elif entry.tags and "task" not in cfg:
        members = sorted(entry.tags)  # a tag entry lists its tasks
    else:
        yield name, entry
    for member in members:
        if isinstance(member, str):
            yield from _task_configs(member, index, _seen | {name})


def _check_local_data_files(tasks: Sequence[str], index: Mapping[str, Any]) -> None:
    """Report a missing local ``data_files`` entry before any model is loaded."""
    cwd = Path.cwd()
    for task in tasks:
        for name, entry in _task_configs(task, index):
            kwargs = (entry.cfg or {}).get("dataset_kwargs") or {}
            files = kwargs.get("data_files") if isinstance(kwargs, Mapping) else None
            for file in _flatten_strings(files):
                if "://" in file or any(ch in file for ch in "*?["):
                    continue  # remote files and glob patterns are left to `datasets`
                # `datasets` resolves relative data_files against the working directory.
                if not (cwd / Path(file).expanduser()).exists():
                    raise EvaluationError(
                        f"task {name!r} ({entry.yaml_path}): data file {file!r} not found; "
                        f"relative data_files resolve against the working directory {cwd}, "
                        "not the YAML's folder, so write absolute paths"
                    )


def _flatten_strings(value: Any) -> Iterator[str]:
    """All strings inside a str / list / dict value (the shapes ``data_files`` may take)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _flatten_strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flatten_strings(item)


# --------------------------------------------------------------------------- running


def _simple_evaluate(
    *,
    run_args: Sequence[dict[str, Any]],
    task_manager: Any,
    tasks: list[str],
    num_fewshot: int | Mapping[str, int | None] | None,
    batch_size: int | str,
    limit: int | float | None,
    device: str,
    seed: int,
    apply_chat_template: bool,
    bootstrap_iters: int,
    log_samples: bool,
) -> list[dict[str, Any] | None]:
    """Run ``lm_eval.simple_evaluate`` once per entry of ``run_args`` (``None`` on non-zero ranks).

    Runs that differ only in their ``peft`` adapter share one loaded base model: each adapter is
    attached, evaluated and unloaded in turn.
    """
    import lm_eval

    batch = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
    # one lm-eval call per distinct few-shot count, all on the model loaded once
    by_count: dict[int | None, list[str]] = {}
    for task in tasks:
        count = num_fewshot.get(task) if isinstance(num_fewshot, Mapping) else num_fewshot
        by_count.setdefault(count, []).append(task)

    def evaluate(lm: Any) -> dict[str, Any] | None:
        started = time.perf_counter()
        parts = [
            lm_eval.simple_evaluate(
                model=lm,
                tasks=group,
                task_manager=task_manager,
                num_fewshot=count,
                batch_size=batch,
                device=device,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=log_samples,
                apply_chat_template=apply_chat_template,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
            for count, group in by_count.items()
        ]
        merged = _merge_results(parts)
        if merged is not None:
            merged["_selectmoe_seconds"] = time.perf_counter() - started
        return merged

    results: list[dict[str, Any] | None] = []
    shared: Any = None  # the HFLM of the base model, reused by every run without own tokenizer
    with _quiet_third_party():
        for model_args in run_args:
            if "tokenizer" in model_args:  # a tokenizer of its own: a model of its own
                lm = _hflm_class().create_from_arg_obj(
                    model_args, {"batch_size": batch, "device": device}
                )
                results.append(evaluate(lm))
                del lm
                continue
            if shared is None:
                base_only = {k: v for k, v in model_args.items() if k != "peft"}
                shared = _hflm_class().create_from_arg_obj(
                    base_only, {"batch_size": batch, "device": device}
                )
            adapter = model_args.get("peft")
            if adapter is not None:
                shared.attach_adapter(adapter, revision=model_args.get("revision"))
            try:
                results.append(evaluate(shared))
            finally:
                if adapter is not None:
                    shared.detach_adapter()
    for result, model_args in zip(results, run_args, strict=True):
        if result is not None:
            # With a model object, lm-eval records no model name or arguments; record ours.
            result.setdefault("config", {})
            result["config"]["model"] = "hf"
            result["config"]["model_args"] = dict(model_args)
    return results


def _merge_results(parts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One lm-eval result from several calls on disjoint tasks (None on non-zero ranks)."""
    if any(part is None for part in parts):
        return None
    merged: dict[str, Any] = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = {**merged[key], **value}
            elif key not in merged:
                merged[key] = value
    return merged


def split_at_character(
    ids: Sequence[int], offsets: Sequence[tuple[int, int]], boundary: int
) -> tuple[list[int], list[int]]:
    """Split the tokens of one whole string where its character ``boundary`` falls.

    ``ids`` and ``offsets`` are the tokenization of ``context + continuation`` (character
    offsets of each token; a token the tokenizer adds, such as ``<s>``, has an empty span) and
    ``boundary`` is ``len(context)``. The context gets every token that ends at or before the
    boundary; the first token with a character after it (a token that straddles the boundary
    too) starts the continuation. So the context's tokens are always a prefix of the whole's,
    the tokens the model is fed are the whole string's, as in training.

    Examples
    --------
    >>> split_at_character([1, 7, 8, 9], [(0, 0), (0, 3), (3, 5), (5, 6)], 5)
    ([1, 7, 8], [9])
    >>> split_at_character([7, 8], [(0, 3), (3, 6)], 4)  # 8 straddles: continuation
    ([7], [8])
    """
    split = len(ids)
    for index, (start, end) in enumerate(offsets):
        if end > start and end > boundary:
            split = index
            break
    return list(ids[:split]), list(ids[split:])


def _hflm_class() -> type:
    """lm-eval's ``hf`` model with PEFT adapters attached without shrinking the embeddings, and
    detachable, so that one loaded base model serves several adapters."""
    from lm_eval.models.huggingface import HFLM

    class _SelectMoeHFLM(HFLM):
        """HFLM that only grows the embedding matrix for a PEFT adapter (lm-eval issue #2748)."""

        def _create_model(self, *args: Any, peft: str | None = None, **kwargs: Any) -> None:
            super()._create_model(*args, peft=None, **kwargs)
            if peft:
                self.attach_adapter(peft, revision=kwargs.get("revision"))

        def attach_adapter(self, adapter: str, *, revision: str | None = None) -> None:
            """Put the PEFT adapter ``adapter`` on the loaded base model."""
            from peft import PeftModel

            n_embeddings = self._model.get_input_embeddings().weight.shape[0]
            if len(self.tokenizer) > n_embeddings:
                # The adapter was trained with added tokens: grow the matrix to hold them.
                logger.info("resizing embeddings %d -> %d", n_embeddings, len(self.tokenizer))
                self._model.resize_token_embeddings(len(self.tokenizer))
            self._model = PeftModel.from_pretrained(
                self._model, adapter, revision=revision or "main"
            )
            self._model.eval()

        def detach_adapter(self) -> None:
            """Remove the adapter's layers again: the base model's weights as they were loaded."""
            self._model = self._model.unload()
            self._model.eval()

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            """Context and continuation tokens as training tokenizes the exchange.

            lm-eval moves the context's trailing whitespace into the continuation and tokenizes
            the context alone; where the vocabulary merges the prompt's last characters with
            that newline (Qwen's ``>\\n``), the context's tokens are not a prefix of the whole
            string's, and the model is fed the prompt without its newline, a sequence training
            never showed it. Here the whole string is tokenized once and split at the context's
            end by character offsets (:func:`split_at_character`); a slow tokenizer or a
            seq2seq model keeps lm-eval's own split.
            """
            if self.backend != "causal" or not getattr(self.tokenizer, "is_fast", False):
                return super()._encode_pair(context, continuation)
            whole = context + continuation
            ids = self.tok_encode(whole)
            for special in (True, False):
                encoded = self.tokenizer(
                    whole, add_special_tokens=special, return_offsets_mapping=True
                )
                if list(encoded["input_ids"]) == list(ids):
                    return split_at_character(ids, encoded["offset_mapping"], len(context))
            return super()._encode_pair(context, continuation)

    return _SelectMoeHFLM


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """Keep rule logs readable while lm-eval runs; restore the settings afterwards.

    Turns off the weight-loading and dataset-building progress bars and the deprecation warning
    that peft 0.21 triggers in transformers 5 on every adapter load. lm-eval's own progress bars
    stay: they pass ``disable=`` explicitly, so no setting reaches them.
    """
    import datasets
    import transformers.utils.logging as hf_logging

    datasets_on = datasets.utils.logging.is_progress_bar_enabled()
    transformers_on = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- output


def _assemble_output(
    raw: Mapping[str, Any], *, selectmoe: dict[str, Any], model_args: dict[str, Any]
) -> dict[str, Any]:
    """The results JSON: lm-eval's summary blocks (no per-sample logs) plus our own block."""
    keep = (
        "results",
        "groups",
        "group_subtasks",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "lm_eval_version",
        "transformers_version",
        "date",
    )
    output = {key: _jsonable(raw[key]) for key in keep if key in raw}
    contracts = evaluation_contracts(output)  # while the task's data files are at hand
    output["selectmoe"] = _jsonable({**selectmoe, "model_args": model_args, "contracts": contracts})
    return output


def _jsonable(value: Any) -> Any:
    """Strict-JSON copy of ``value``: tuples to lists, NaN/inf to null, objects to names/strings."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(item) for item in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _jsonable(value.item())  # numpy / torch scalars
    if callable(value) and hasattr(value, "__qualname__"):
        # A function's repr holds its memory address; its qualified name is stable.
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return str(value)  # e.g. torch.float32 -> "torch.float32"


def _sample_records(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> Iterator[dict[str, Any]]:
    """One compact record per evaluated document, tasks in sorted order."""
    for task in sorted(samples):
        for sample in samples[task]:
            metrics = {name: sample[name] for name in sample.get("metrics", ()) if name in sample}
            yield _jsonable(
                {
                    "task": task,
                    "doc_id": sample.get("doc_id"),
                    "target": sample.get("target"),
                    "filter": sample.get("filter"),
                    "filtered_resps": sample.get("filtered_resps"),
                    "metrics": metrics,
                }
            )
