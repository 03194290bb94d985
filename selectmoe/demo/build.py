"""``build_demo`` and ``build_demo_target``: the demo directory, written atomically and
deterministically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selectmoe.demo.models import (
    _packed_blocks,
    _pretrain_and_save,
    _pretraining_corpus,
    _train_tokenizer,
)
from selectmoe.demo.noise import (
    _build_pool_dataset,
    _PoolExample,
)
from selectmoe.demo.tasks import (
    _eval_docs,
    _task_yaml,
    query_examples,
)
from selectmoe.demo.world import (
    DATASETS,
    EVAL_TASKS,
    NOISE_KINDS,
    SPECIAL_TOKENS,
    _build_world,
    _neighbour_world,
    _World,
)
from selectmoe.errors import check_int
from selectmoe.hashing import file_sha256
from selectmoe.io import atomic_output_dir, dumps_json_line

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the build


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(dumps_json_line(record) + "\n")


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    check_int(value, name, minimum=minimum, maximum=maximum)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    import torch

    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_demo(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    examples_per_dataset: int = 600,
    noise_fraction: float = 0.3,
    eval_docs_per_task: int = 120,
    query_docs_per_task: int = 5,
    pretrain_steps: int = 300,
    target_pretrain_steps: int | None = None,
    pretrain_batch_size: int = 16,
    pretrain_sequence_length: int = 128,
    pretrain_learning_rate: float = 3e-3,
    vocab_size: int = 1536,
    num_threads: int | None = 1,
    build_target: bool = True,
) -> dict[str, Any]:
    """Build the embedded demo (tokenizer, tiny models, noisy pool, local lm-eval tasks).

    The directory is built beside ``out_dir`` under a temporary name and renamed into place when
    complete; an existing ``out_dir`` is replaced only then, so a killed build never leaves a
    complete-looking directory.

    Parameters
    ----------
    out_dir : path-like
        Destination directory (see the module docstring for its layout).
    seed : int, default 0
        Seeds everything: the invented world, pool, noise, evaluation questions, tokenizer corpus
        and model initialisation and batch order.
    examples_per_dataset : int, default 600
        Pool examples in each of ``cot``, ``dolly``, ``flan_v2``, ``oasst1``.
    noise_fraction : float, default 0.3
        Share of each dataset that is planted noise: exactly
        ``round(noise_fraction * examples_per_dataset)`` examples (Python's rounding), the kinds
        of :data:`NOISE_KINDS` in turn. At least one example per dataset must stay clean (it is
        the source of near duplicates).
    eval_docs_per_task : int, default 120
        Documents in each task of :data:`EVAL_TASKS` (at most 1000).
    query_docs_per_task : int, default 5
        Held-out examples of each task for the targeted methods (``queries.jsonl``), disjoint
        from the test documents and the pool.
    pretrain_steps : int, default 300
        Optimizer steps of the base (OLMoE) model's pretraining; 0 leaves it at random init.
    target_pretrain_steps : int, optional
        Steps for the target (Llama) model; default ``pretrain_steps``. The target reads about
        a neighbouring world (the same words, other owners, another language), so it knows the
        formats but must learn the pool's facts from the pool.
    pretrain_batch_size : int, default 16
        Sequences per pretraining step.
    pretrain_sequence_length : int, default 128
        Tokens per packed pretraining sequence (documents are concatenated, each starting with
        ``<s>``).
    pretrain_learning_rate : float, default 3e-3
        Peak AdamW learning rate (10% linear warmup, cosine decay to a tenth).
    vocab_size : int, default 1536
        BPE vocabulary size, special tokens included (256 to 8192).
    num_threads : int or None, default 1
        ``torch.set_num_threads`` for the build (restored afterwards); None leaves torch's
        setting as it is. One thread is the default because the models are so small that more
        threads gain little, while on shared cores torch's threads wait on each other: on a busy
        2-core machine 2 threads made the build ten times slower than 1.
    build_target : bool, default True
        Also pretrain the target model; False leaves it to :func:`build_demo_target` (the
        workflow runs the two pretrainings as two jobs, side by side).

    Returns
    -------
    dict
        The manifest also written to ``out_dir/demo_manifest.json``: ``seed``, ``parameters``,
        ``counts`` (examples per dataset), ``planted`` (per dataset and kind), ``tasks``
        (name -> number of docs), ``special_tokens`` (token -> id), ``models`` (summary per
        model), ``files`` (relative path -> ``{"bytes", "sha256"}``).

    Raises
    ------
    ValueError
        When a parameter is out of range (the message names it and the valid range).

    Examples
    --------
    >>> manifest = build_demo("results/demo", examples_per_dataset=40, pretrain_steps=5,
    ...                       eval_docs_per_task=10)  # doctest: +SKIP
    >>> manifest["counts"]["dolly"]  # doctest: +SKIP
    40
    """
    _check_int("seed", seed, minimum=0)
    _check_int("examples_per_dataset", examples_per_dataset, minimum=1)
    _check_int("eval_docs_per_task", eval_docs_per_task, minimum=1, maximum=1000)
    _check_int("query_docs_per_task", query_docs_per_task, minimum=1, maximum=1000)
    _check_int("pretrain_steps", pretrain_steps, minimum=0)
    if target_pretrain_steps is None:
        target_pretrain_steps = pretrain_steps
    _check_int("target_pretrain_steps", target_pretrain_steps, minimum=0)
    _check_int("pretrain_batch_size", pretrain_batch_size, minimum=1)
    _check_int("pretrain_sequence_length", pretrain_sequence_length, minimum=8, maximum=1024)
    _check_int("vocab_size", vocab_size, minimum=256 + len(SPECIAL_TOKENS), maximum=8192)
    if num_threads is not None:
        _check_int("num_threads", num_threads, minimum=1)
    if not isinstance(noise_fraction, int | float) or not 0.0 <= noise_fraction < 1.0:
        raise ValueError(f"noise_fraction is {noise_fraction!r}; it must be in [0, 1)")
    if round(noise_fraction * examples_per_dataset) >= examples_per_dataset:
        raise ValueError(
            f"noise_fraction {noise_fraction} plants all {examples_per_dataset} examples of a "
            "dataset; lower it so that at least one example stays clean"
        )
    if not pretrain_learning_rate > 0:
        raise ValueError(f"pretrain_learning_rate is {pretrain_learning_rate}; it must be > 0")

    out_path = Path(out_dir).resolve()  # task files name their data by absolute path
    parameters = {
        "seed": seed,
        "examples_per_dataset": examples_per_dataset,
        "noise_fraction": noise_fraction,
        "eval_docs_per_task": eval_docs_per_task,
        "query_docs_per_task": query_docs_per_task,
        "pretrain_steps": pretrain_steps,
        "target_pretrain_steps": target_pretrain_steps,
        "pretrain_batch_size": pretrain_batch_size,
        "pretrain_sequence_length": pretrain_sequence_length,
        "pretrain_learning_rate": pretrain_learning_rate,
        "vocab_size": vocab_size,
        "models": ["base", "target"] if build_target else ["base"],
    }
    logger.info("building the demo in %s with %s", out_path, parameters)
    start = time.perf_counter()
    with _torch_threads(num_threads), atomic_output_dir(out_path) as tmp:
        manifest = _build_into(tmp, out_path, parameters)
    logger.info("demo built in %.1f s: %s", time.perf_counter() - start, out_path)
    return manifest


def pool_records(
    *, seed: int, examples_per_dataset: int, noise_fraction: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """The demo pool's LESS-format records per dataset (``dataset``, ``id``, ``messages``), as
    :func:`build_demo` writes them for the same arguments, without the rest of the demo."""
    _check_int("examples_per_dataset", examples_per_dataset, minimum=1)
    world = _build_world(seed)
    return {
        dataset: [
            e.record()
            for e in _build_pool_dataset(
                dataset,
                world,
                seed=seed,
                n_examples=examples_per_dataset,
                noise_fraction=noise_fraction,
            )
        ]
        for dataset in DATASETS
    }


def _target_corpus(world: _World, parameters: dict[str, Any], eval_questions: set[str]):
    return _pretraining_corpus(
        _neighbour_world(world, parameters["seed"]),
        seed=parameters["seed"],
        steps=parameters["target_pretrain_steps"],
        parameters=parameters,
        eval_questions=eval_questions,
        purpose="pretrain-target",
    )


def build_demo_target(
    demo_dir: str | os.PathLike[str], *, num_threads: int | None = 1
) -> dict[str, Any]:
    """Pretrain the target model of a demo built with ``build_target=False``.

    The second half of :func:`build_demo`, as a job of its own so that the workflow pretrains
    the base and the target model side by side. Reads the parameters from the demo's manifest,
    the tokenizer and the evaluation questions from its files, and writes ``target_model/``
    (with ``pretrain_summary.json``) atomically; the result equals that of a one-job build.

    Returns
    -------
    dict
        The target model's summary.
    """
    demo_path = Path(demo_dir).resolve()
    manifest_path = demo_path / "demo_manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path} not found; build the demo (build_demo) first")
    parameters = json.loads(manifest_path.read_text(encoding="utf-8"))["parameters"]
    from transformers import AutoTokenizer

    world = _build_world(parameters["seed"])
    eval_questions = {
        json.loads(line)["question"]
        for task in EVAL_TASKS
        for line in (demo_path / "tasks" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
    }
    tokenizer = AutoTokenizer.from_pretrained(demo_path / "tokenizer")
    documents = _target_corpus(world, parameters, eval_questions)
    token_ids = tokenizer(documents, add_special_tokens=True)["input_ids"]
    blocks = _packed_blocks(token_ids, parameters["pretrain_sequence_length"])
    with _torch_threads(num_threads), atomic_output_dir(demo_path / "target_model") as tmp:
        tmp.chmod(0o755)
        summary = _pretrain_and_save("target", tokenizer, blocks, parameters, tmp)
        (tmp / "pretrain_summary.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    return summary


def _build_into(tmp: Path, final: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Write every demo file under ``tmp``; paths inside files point at ``final``."""

    # mkdtemp makes the directory private (0700); the demo is a shared project output
    tmp.chmod(0o755)
    seed = parameters["seed"]
    world = _build_world(seed)

    # -- pool and noise labels
    pool: dict[str, list[_PoolExample]] = {
        dataset: _build_pool_dataset(
            dataset,
            world,
            seed=seed,
            n_examples=parameters["examples_per_dataset"],
            noise_fraction=parameters["noise_fraction"],
        )
        for dataset in DATASETS
    }
    labels = []
    for dataset, examples in pool.items():
        _write_jsonl(
            tmp / "pool" / dataset / f"{dataset}_data.jsonl", [e.record() for e in examples]
        )
        labels.extend(
            {"dataset": e.dataset, "id": e.id, "planted": e.kind != "clean", "kind": e.kind}
            for e in examples
        )
    _write_jsonl(tmp / "noise_labels.jsonl", labels)
    planted = {
        dataset: dict(sorted(Counter(e.kind for e in examples if e.kind != "clean").items()))
        for dataset, examples in pool.items()
    }
    logger.info("pool: %s", {d: (len(pool[d]), sum(planted[d].values())) for d in DATASETS})

    # -- held-out evaluation tasks
    pool_questions = {
        message["content"]
        for examples in pool.values()
        for example in examples
        for message in example.messages
        if message["role"] == "user"
    }
    eval_questions: set[str] = set()
    for task in EVAL_TASKS:
        docs = _eval_docs(
            task,
            world,
            seed=seed,
            n_docs=parameters["eval_docs_per_task"],
            pool_questions=pool_questions,
        )
        eval_questions.update(doc["question"] for doc in docs)
        _write_jsonl(tmp / "tasks" / f"{task}.jsonl", docs)
        (tmp / "tasks" / f"{task}.yaml").write_text(
            _task_yaml(task, final / "tasks" / f"{task}.jsonl"), encoding="utf-8"
        )

    # -- query sets of the targeted methods: other questions of the same tasks
    _write_jsonl(
        tmp / "queries.jsonl",
        query_examples(
            world,
            seed=seed,
            n_per_task=parameters["query_docs_per_task"],
            exclude=pool_questions | eval_questions,
        ),
    )

    # -- clean pretraining corpora: same generators, another stream, no evaluation question; the
    # base model (the selector) reads about the pool's world, the target about its neighbour
    corpora = {
        "base": _pretraining_corpus(
            world,
            seed=seed,
            steps=parameters["pretrain_steps"],
            parameters=parameters,
            eval_questions=eval_questions,
            purpose="pretrain",
        ),
        "target": _target_corpus(world, parameters, eval_questions),
    }
    tokenizer = _train_tokenizer(
        corpora["base"] + corpora["target"], vocab_size=parameters["vocab_size"]
    )
    tokenizer.save_pretrained(tmp / "tokenizer")
    logger.info("tokenizer: %d tokens in the vocabulary", len(tokenizer))
    blocks = {}
    for role, documents in corpora.items():
        # add_special_tokens puts <s> in front of every document, as encode_examples does
        token_ids = tokenizer(documents, add_special_tokens=True)["input_ids"]
        blocks[role] = _packed_blocks(token_ids, parameters["pretrain_sequence_length"])
        logger.info(
            "%s pretraining corpus: %d documents, %d tokens, %d blocks",
            role,
            len(documents),
            sum(len(ids) for ids in token_ids),
            len(blocks[role]),
        )

    # -- models (the target only when it is not built by its own job: build_demo_target)
    summaries = {}
    for role in parameters["models"]:
        summaries[role] = _pretrain_and_save(
            role, tokenizer, blocks[role], parameters, tmp / f"{role}_model"
        )

    manifest: dict[str, Any] = {
        "seed": seed,
        "parameters": parameters,
        "datasets": list(DATASETS),
        "counts": {dataset: len(examples) for dataset, examples in pool.items()},
        "planted": planted,
        "noise_kinds": list(NOISE_KINDS),
        "tasks": {task: parameters["eval_docs_per_task"] for task in EVAL_TASKS},
        "special_tokens": {
            token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS
        },
        "pretraining_corpus": {
            role: {"documents": len(corpora[role]), "blocks": len(blocks[role])} for role in corpora
        },
        "models": summaries,
        "files": {
            path.relative_to(tmp).as_posix(): {
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        },
    }
    (tmp / "demo_manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest
