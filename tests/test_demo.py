"""Tests of the embedded demo builder (selectmoe.demo).

One small demo is built once per session; the other builds (same seed, another seed, a failing
build) are as small as they can be.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from selectmoe.data.encoding import render_chat
from selectmoe.data.pool import load_pool
from selectmoe.demo import (
    DATASETS,
    EVAL_TASKS,
    NOISE_KINDS,
    SPECIAL_TOKENS,
    build_demo,
    conversations,
    models,
    noise,
)
from selectmoe.demo import world as demo_world

SMALL: dict[str, Any] = {
    "examples_per_dataset": 40,
    "noise_fraction": 0.3,
    "eval_docs_per_task": 10,
    "pretrain_steps": 5,
    "target_pretrain_steps": 2,
    # one thread: other test processes on the same cores slow multi-threaded torch down badly
    "num_threads": 1,
}


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("demo") / "demo"
    manifest = build_demo(out_dir, seed=0, **SMALL)
    return out_dir, manifest


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _pool(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {d: _read_jsonl(out_dir / "pool" / d / f"{d}_data.jsonl") for d in DATASETS}


def _labels(out_dir: Path) -> dict[tuple[str, str], str]:
    return {(r["dataset"], r["id"]): r["kind"] for r in _read_jsonl(out_dir / "noise_labels.jsonl")}


def _data_files(out_dir: Path) -> dict[str, bytes]:
    """Pool, labels and task data (the YAMLs name the absolute data path, so they differ)."""
    paths = [out_dir / "noise_labels.jsonl", *sorted((out_dir / "pool").rglob("*.jsonl"))]
    paths += sorted((out_dir / "tasks").glob("*.jsonl"))
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in paths}


_EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.\nThe answer is (\d+)\.$")


def _arithmetic_is_right(answer: str) -> bool:
    """Whether a cot answer's last equation and its final answer are both correct."""
    match = _EQUATION.search(answer)
    assert match, answer
    left, operator, right, result, final = match.groups()
    expected = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}[operator](
        int(left), int(right)
    )
    return int(result) == expected and int(final) == expected


# ----------------------------------------------------------------------------------------------
# layout, determinism, atomicity


def test_layout_and_manifest(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, manifest = small_demo
    for dataset in DATASETS:
        assert (out_dir / "pool" / dataset / f"{dataset}_data.jsonl").is_file()
    for task in EVAL_TASKS:
        assert (out_dir / "tasks" / f"{task}.yaml").is_file()
        assert (out_dir / "tasks" / f"{task}.jsonl").is_file()
    for model_dir in ("base_model", "target_model", "tokenizer"):
        assert (out_dir / model_dir / "tokenizer.json").is_file()
    assert json.loads((out_dir / "demo_manifest.json").read_text()) == manifest
    assert manifest["seed"] == 0
    assert manifest["parameters"]["examples_per_dataset"] == 40
    assert manifest["counts"] == dict.fromkeys(DATASETS, 40)
    assert manifest["tasks"] == dict.fromkeys(EVAL_TASKS, 10)
    assert manifest["models"]["base"]["num_experts"] == 8
    assert manifest["models"]["base"]["pretrain_steps"] == 5
    assert manifest["models"]["target"]["pretrain_steps"] == 2
    listed = set(manifest["files"])
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()} - {
        "demo_manifest.json"
    }
    assert listed == on_disk
    # no temporary directory left beside the result
    assert [p.name for p in out_dir.parent.iterdir()] == ["demo"]


def test_same_seed_is_byte_identical(
    small_demo: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out_dir, manifest = small_demo
    again = build_demo(tmp_path / "again", seed=0, **SMALL)
    assert _data_files(tmp_path / "again") == _data_files(out_dir)
    # tokenizer and model weights too (same machine, same thread count)
    yamls = {f"tasks/{task}.yaml" for task in EVAL_TASKS}
    assert {k: v for k, v in again["files"].items() if k not in yamls} == {
        k: v for k, v in manifest["files"].items() if k not in yamls
    }
    assert again["models"] == manifest["models"]
    # the task configs differ only by the absolute data path
    for name in yamls:
        ours = (out_dir / name).read_text().replace(str(out_dir.resolve()), "OUT")
        theirs = (tmp_path / "again" / name).read_text()
        assert theirs.replace(str((tmp_path / "again").resolve()), "OUT") == ours


def test_other_seed_differs(small_demo: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out_dir, _ = small_demo
    build_demo(tmp_path / "other", seed=1, **{**SMALL, "pretrain_steps": 0})
    ours, theirs = _data_files(out_dir), _data_files(tmp_path / "other")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] != theirs[name], name


def test_failed_build_leaves_previous_demo(
    small_demo: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("previous build")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        build_demo(out_dir, **SMALL)
    assert [p.name for p in out_dir.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # temporary directory removed

    monkeypatch.undo()
    build_demo(out_dir, **{**SMALL, "pretrain_steps": 0})
    assert not (out_dir / "old.txt").exists()
    assert (out_dir / "demo_manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_fraction": 1.0}, r"noise_fraction is 1\.0; it must be in \[0, 1\)"),
        ({"noise_fraction": 0.99}, "at least one example stays clean"),
        ({"examples_per_dataset": 0}, r"examples_per_dataset is 0; it must be >= 1"),
        ({"eval_docs_per_task": 5000}, r"eval_docs_per_task is 5000; it must be in \[1, 1000\]"),
        ({"pretrain_steps": -1}, "pretrain_steps is -1"),
        ({"vocab_size": 100}, r"vocab_size is 100; it must be in \[263, 8192\]"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_invalid_parameters(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_demo(tmp_path / "demo", **{**SMALL, **change})
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------------------------
# pool and noise labels


def test_pool_is_valid_less_data(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, _ = small_demo
    files = [out_dir / "pool" / d / f"{d}_data.jsonl" for d in DATASETS]
    examples = load_pool(files)
    assert Counter(e.dataset for e in examples) == dict.fromkeys(DATASETS, 40)
    for dataset, records in _pool(out_dir).items():
        # ids are positions: they say nothing about the label
        assert [r["id"] for r in records] == [f"{dataset}_{i}" for i in range(40)]
        assert all(list(r) == ["dataset", "id", "messages"] for r in records)
        assert all(m["content"] for r in records for m in r["messages"])


def test_single_turn_multi_turn_and_system_messages(
    small_demo: tuple[Path, dict[str, Any]],
) -> None:
    out_dir, _ = small_demo
    pool = _pool(out_dir)

    def n_assistant(record: dict[str, Any]) -> int:
        return sum(m["role"] == "assistant" for m in record["messages"])

    for dataset in ("cot", "dolly", "flan_v2"):
        assert all(n_assistant(r) == 1 for r in pool[dataset])
    turns = Counter(n_assistant(r) for r in pool["oasst1"])
    assert turns[1] > 0 and turns[2] > 0 and turns[3] > 0
    with_system = [r for r in pool["oasst1"] if r["messages"][0]["role"] == "system"]
    assert 0 < len(with_system) < 40


def test_planted_share_and_label_coverage(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, manifest = small_demo
    labels_list = _read_jsonl(out_dir / "noise_labels.jsonl")
    labels = _labels(out_dir)
    pool_keys = [(r["dataset"], r["id"]) for records in _pool(out_dir).values() for r in records]
    # one label per pool example, in pool order, nothing more
    assert [(r["dataset"], r["id"]) for r in labels_list] == pool_keys
    assert len(labels) == len(pool_keys)
    assert all(r["planted"] == (r["kind"] != "clean") for r in labels_list)
    expected = round(0.3 * 40)
    for dataset in DATASETS:
        kinds = Counter(kind for (d, _), kind in labels.items() if d == dataset)
        assert sum(n for kind, n in kinds.items() if kind != "clean") == expected
        assert set(kinds) == {"clean", *NOISE_KINDS}  # every kind at this size
        assert sum(manifest["planted"][dataset].values()) == expected
        # planted examples are interleaved, not gathered at one end
        planted = sorted(
            int(example_id.rsplit("_", 1)[1])
            for (d, example_id), kind in labels.items()
            if d == dataset and kind != "clean"
        )
        assert planted != list(range(expected)) and planted != list(range(40 - expected, 40))


def test_planted_kinds_at_default_size() -> None:
    pool = noise._build_pool_dataset(
        "flan_v2", demo_world._build_world(0), seed=0, n_examples=600, noise_fraction=0.3
    )
    kinds = Counter(example.kind for example in pool)
    assert kinds["clean"] == 420
    assert {kinds[kind] for kind in NOISE_KINDS} == {36}


def test_labels_describe_the_examples(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, _ = small_demo
    labels = _labels(out_dir)
    pool = _pool(out_dir)
    for dataset, records in pool.items():
        clean_answers = [
            [m for m in r["messages"] if m["role"] != "user"]
            for r in records
            if labels[(dataset, r["id"])] == "clean"
        ]
        clean_users = {
            m["content"]
            for r in records
            if labels[(dataset, r["id"])] == "clean"
            for m in r["messages"]
            if m["role"] == "user"
        }
        for record in records:
            kind = labels[(dataset, record["id"])]
            if kind == "near_duplicate":
                # same answers as a clean example, a slightly edited question
                assert [m for m in record["messages"] if m["role"] != "user"] in clean_answers
                first_user = next(m for m in record["messages"] if m["role"] == "user")
                assert first_user["content"] not in clean_users
    for record in pool["cot"]:
        kind = labels[("cot", record["id"])]
        answer = record["messages"][-1]["content"]
        if kind == "clean":
            assert _arithmetic_is_right(answer)
        elif kind == "wrong_answer":
            assert not _arithmetic_is_right(answer)
        elif kind in ("shuffled", "truncated", "junk"):
            assert not _EQUATION.search(answer)


# ----------------------------------------------------------------------------------------------
# evaluation tasks


def _fact_is_right(world: Any, sentence: str) -> bool:
    return any(
        sentence == conversations._fact_sentence(country, attribute, getattr(country, attribute))
        for country in world.countries
        for attribute in ("capital", "currency", "language", "animal")
    )


def _translation_is_right(world: Any, sentence: str) -> bool:
    language = world.lexicon_language
    return any(
        sentence == f'In {language}, "{english}" is "{foreign}".'
        for english, foreign in world.lexicon.items()
    )


def test_eval_docs_are_held_out_and_well_formed(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, manifest = small_demo
    world = demo_world._build_world(manifest["seed"])
    pool_users = {
        m["content"]
        for records in _pool(out_dir).values()
        for r in records
        for m in r["messages"]
        if m["role"] == "user"
    }
    for task in EVAL_TASKS:
        docs = _read_jsonl(out_dir / "tasks" / f"{task}.jsonl")
        assert len(docs) == 10
        assert len({d["question"] for d in docs}) == 10
        for doc in docs:
            assert doc["question"] not in pool_users
            assert len(doc["choices"]) == len(set(doc["choices"])) == 4
            assert 0 <= doc["answer"] < 4
            correct = doc["choices"][doc["answer"]]
            if task == "demo_facts":
                assert [_fact_is_right(world, c) for c in doc["choices"]].count(True) == 1
                assert _fact_is_right(world, correct)
            elif task == "demo_translate":
                assert [_translation_is_right(world, c) for c in doc["choices"]].count(True) == 1
                assert _translation_is_right(world, correct)
            elif task == "demo_sentiment":
                assert doc["choices"] == ["positive", "negative", "neutral", "mixed"]


def test_task_yaml(small_demo: tuple[Path, dict[str, Any]]) -> None:
    out_dir, _ = small_demo
    for task in EVAL_TASKS:
        config = yaml.safe_load((out_dir / "tasks" / f"{task}.yaml").read_text())
        assert config["task"] == task
        assert config["output_type"] == "multiple_choice"
        assert config["doc_to_text"] == "<|user|>\n{{question}}\n<|assistant|>\n"
        assert config["target_delimiter"] == ""
        assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
        data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data_file.is_absolute()
        assert data_file == (out_dir / "tasks" / f"{task}.jsonl").resolve()


@pytest.mark.slow
def test_lm_eval_runs_a_task(small_demo: tuple[Path, dict[str, Any]]) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out_dir, _ = small_demo
    task_manager = TaskManager(include_path=str(out_dir / "tasks"))
    assert set(EVAL_TASKS) <= set(task_manager.all_tasks)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out_dir / 'target_model'}",
        tasks=["demo_facts"],
        task_manager=task_manager,
        device="cpu",
        batch_size=16,
        limit=5,
    )
    scores = results["results"]["demo_facts"]
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert 0.0 <= scores["acc_norm,none"] <= 1.0
    assert results["n-samples"]["demo_facts"]["effective"] == 5


# ----------------------------------------------------------------------------------------------
# tokenizer and models


def test_tokenizer(small_demo: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoTokenizer

    out_dir, manifest = small_demo
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    assert 1000 <= len(tokenizer) <= 2000
    ids = {tag: tokenizer.encode(tag, add_special_tokens=False) for tag in SPECIAL_TOKENS}
    assert all(len(tag_ids) == 1 for tag_ids in ids.values()), ids
    assert [i[0] for i in ids.values()] == list(range(7))
    assert manifest["special_tokens"] == {tag: i[0] for tag, i in ids.items()}
    assert tokenizer.bos_token_id == ids["<s>"][0]
    assert tokenizer.eos_token_id == ids["</s>"][0]
    assert tokenizer.pad_token_id == ids["<pad>"][0]

    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 3 + 4?\nThanks!"},
        {"role": "assistant", "content": "The answer is 7."},
    ]
    text = render_chat(messages, tokenizer.eos_token)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == text
    encoded = tokenizer(text)["input_ids"]
    assert encoded[0] == tokenizer.bos_token_id  # <s> is added like Llama's tokenizer
    assert encoded.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(encoded[1:]) == text  # byte level: exact round trip, "\n" included
    junk = "x9#~ é\t☃\n"
    assert tokenizer.decode(tokenizer.encode(junk, add_special_tokens=False)) == junk


@pytest.mark.parametrize(
    ("model_dir", "architecture"),
    [("base_model", "OlmoeForCausalLM"), ("target_model", "LlamaForCausalLM")],
)
def test_models_load_and_run(
    small_demo: tuple[Path, dict[str, Any]], model_dir: str, architecture: str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _ = small_demo
    model = AutoModelForCausalLM.from_pretrained(out_dir / model_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir / model_dir)
    assert type(model).__name__ == architecture
    assert model.dtype == torch.float32
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.vocab_size == len(tokenizer)
    if architecture == "OlmoeForCausalLM":
        assert (model.config.num_experts, model.config.num_experts_per_tok) == (8, 2)
    batch = tokenizer(
        ["<|user|>\nHi\n<|assistant|>\nHello!</s>\n", "<|user|>\nWhat is 2 + 2?\n"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_pretraining_teaches_the_format(tmp_path: Path) -> None:
    """A few dozen steps already make the template's tokens likely (the routers mean something)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = tmp_path / "demo"
    manifest = build_demo(out_dir, **{**SMALL, "pretrain_steps": 60, "target_pretrain_steps": 0})
    assert manifest["models"]["base"]["final_pretrain_loss"] < 4.0  # from ~7.3 = ln(1536)
    assert manifest["models"]["target"]["final_pretrain_loss"] is None
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "base_model")
    model = AutoModelForCausalLM.from_pretrained(out_dir / "base_model")
    ids = tokenizer("<|user|>\nWhat is the capital of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        router_logits = model(input_ids=ids, output_router_logits=True).router_logits
    # the routers spread tokens over several experts, not one
    chosen = torch.cat([layer.topk(2, dim=-1).indices.flatten() for layer in router_logits])
    assert len(set(chosen.tolist())) >= 3


def test_the_target_reads_about_a_neighbouring_world() -> None:
    """Same cities, currencies, languages and animals, other owners and another lexicon: the
    target knows the words and formats but must learn the pool's facts from the pool."""
    world = demo_world._build_world(0)
    neighbour = demo_world._neighbour_world(world, 0)
    assert [c.capital for c in neighbour.countries] == [c.capital for c in world.countries]
    assert [c.currency for c in neighbour.countries] == [c.currency for c in world.countries]
    assert not {c.name for c in neighbour.countries} & {c.name for c in world.countries}
    assert neighbour.lexicon.keys() == world.lexicon.keys()
    assert not set(neighbour.lexicon.values()) & set(world.lexicon.values())
    assert neighbour.lexicon_language != world.lexicon_language
    country_names = {c.name for c in world.countries} | set(world.lexicon.values())
    corpus = models._pretraining_corpus(
        neighbour,
        seed=0,
        steps=1,
        parameters={"pretrain_batch_size": 1, "pretrain_sequence_length": 8},
        eval_questions=set(),
        purpose="pretrain-target",
    )
    assert len(corpus) == 3_000
    words = {word for document in corpus for word in re.findall(r"\w+", document)}
    assert not words & country_names


def test_pretraining_batches_have_the_requested_shape() -> None:
    import torch

    blocks = torch.arange(10 * 4).view(10, 4)
    settings = models._PretrainSettings(
        steps=7, batch_size=3, sequence_length=4, learning_rate=1e-3, seed=0
    )
    batches = list(models._batches(blocks, settings))
    assert [tuple(b.shape) for b in batches] == [(3, 4)] * 7
    # each pass over the corpus visits every block once (7 * 3 = 21 = 2 passes + 1 block)
    rows = torch.cat(batches)[:, 0] // 4
    assert sorted(rows[:10].tolist()) == list(range(10))
    assert sorted(rows[10:20].tolist()) == list(range(10))
