"""The targeted methods rds (RDS+) and less (LESS): representations, per-example gradients, the
projection, the warmup's checkpoints, resumable gradient jobs, the scores and the selection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selectmoe.data.encoding import collate_encoded, encode_examples
from selectmoe.data.pool import load_jsonl_examples
from selectmoe.data.queries import QUERY_TEMPLATE, load_queries
from selectmoe.errors import ConfigError, DataError, RouterDataError
from selectmoe.model.losses import causal_lm_loss
from selectmoe.selection.select import run_selection
from selectmoe.selection.targeted import less_scores, load_features, rds_round_robin, save_features
from selectmoe.stages.less import (
    LessSettings,
    checkpoint_files,
    lora_target_model,
    run_less_gradients,
    run_less_warmup,
)
from selectmoe.stages.representations import RepresentationSettings, run_representations
from selectmoe.training.gradients import (
    PROJECTION_BLOCK_ROWS,
    RademacherProjection,
    adam_update_direction,
    per_example_gradients,
)

TASKS = ("alpha", "beta")
REPO = Path(__file__).resolve().parents[1]


def _write_queries(path: Path, per_task: int = 3) -> Path:
    lines = []
    for task in TASKS:
        for i in range(per_task):
            record = {
                "dataset": task,
                "id": f"{task}/{i}",
                "task": task,
                "subtask": f"{task}-{i % 2}",
                "messages": [
                    {"role": "user", "content": f"{task} question {i} red blue"},
                    {"role": "assistant", "content": f"answer {task} {i}"},
                ],
            }
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LESS_SMALL = {
    "warmup_share": 0.5,
    "epochs": 2,
    "lora_r": 2,
    "lora_alpha": 4,
    "lora_dropout": 0.1,
    "learning_rate": 1e-2,
    "effective_batch_size": 2,
    "per_device_batch_size": 2,
    "max_sequence_length": 160,
    "bf16": False,
    "projection_dim": 16,
    "batch_size": 3,
    "shard_size": 4,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def less_warmup(tmp_path_factory, tiny_llama_dir, tiny_pool):
    out = tmp_path_factory.mktemp("less") / "warmup"
    settings = LessSettings(**LESS_SMALL)
    log = run_less_warmup(
        base_model=str(tiny_llama_dir),
        pool_paths=list(tiny_pool.values()),
        output_dir=out,
        settings=settings,
    )
    return out, settings, log


# ----------------------------------------------------------------------------------------------
# RDS+ representations


def test_representations_equal_a_plain_per_example_forward(tmp_path, tiny_llama_dir, tiny_pool):
    """Batched, padded, length-sorted pooling equals the authors' weighted mean of
    ``hidden_states[-1]`` computed one unpadded example at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = next(iter(tiny_pool.values()))
    out = tmp_path / "features.pt"
    run_representations(
        model_source=str(tiny_llama_dir),
        data_path=data,
        output=out,
        settings=RepresentationSettings(batch_size=4, max_sequence_length=64, device="cpu"),
    )
    features = load_features([out])
    examples = load_jsonl_examples(data)
    assert features.features.shape == (1, len(examples), 32)
    assert features.sample_ids == [e.id for e in examples]
    assert features.kind == "representations"

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=True, max_sequence_length=64
    )
    lengths = {len(e.input_ids) for e in encoded}
    assert len(lengths) > 1  # the batches are padded
    for row, item in enumerate(encoded):
        ids = torch.tensor([item.input_ids])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        weights = torch.arange(1, ids.shape[1] + 1, dtype=torch.float32)
        expected = (hidden * (weights / weights.sum())[:, None]).sum(dim=0)
        torch.testing.assert_close(features.features[0, row], expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# per-example gradients and the projection


def _lora_with_nonzero_b(tiny_llama_dir):
    model, tokenizer, _ = lora_target_model(
        str(tiny_llama_dir), LessSettings(**LESS_SMALL), torch.device("cpu")
    )
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give the gradients of A something to see
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return model.eval(), tokenizer


def test_per_example_gradients_equal_a_plain_backward(tiny_llama_dir, tiny_pool):
    model, tokenizer = _lora_with_nonzero_b(tiny_llama_dir)
    examples = load_jsonl_examples(next(iter(tiny_pool.values())))
    encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=False, max_sequence_length=160
    )
    batch = collate_encoded(encoded, pad_token_id=tokenizer.pad_token_id)
    assert batch["attention_mask"].float().mean() < 1  # padded
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    batched = per_example_gradients(model, params, batch["input_ids"], batch["labels"])
    assert batched.shape == (len(encoded), sum(p.numel() for p in params.values()))
    for row, item in enumerate(encoded):
        model.zero_grad()
        logits = model(input_ids=torch.tensor([item.input_ids])).logits
        causal_lm_loss(logits, torch.tensor([item.labels]), sample_wise=False).backward()
        direct = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in names])
        assert (direct.abs().max() > 0) == (item.n_label_tokens > 0)
        torch.testing.assert_close(batched[row], direct, atol=1e-6, rtol=1e-4)


def test_projection_is_seeded_and_does_not_depend_on_the_batch():
    n_params = PROJECTION_BLOCK_ROWS + 1000  # two blocks
    vectors = torch.randn(5, n_params, generator=torch.Generator().manual_seed(0))
    first = RademacherProjection(n_params, 64, seed=3).project(vectors)
    again = RademacherProjection(n_params, 64, seed=3).project(vectors)
    assert torch.equal(first, again)
    split = torch.cat(
        [RademacherProjection(n_params, 64, seed=3).project(v[None]) for v in vectors]
    )
    torch.testing.assert_close(split, first, atol=1e-3, rtol=1e-4)
    other = RademacherProjection(n_params, 64, seed=4).project(vectors)
    assert not torch.allclose(first, other)
    # entries are +-1/sqrt(d): the matrix as a whole, built from its blocks, gives the same
    projection = RademacherProjection(n_params, 64, seed=3)
    matrix = torch.cat([projection.block(0, vectors.device), projection.block(1, vectors.device)])
    assert matrix.shape == (n_params, 64)
    assert set(torch.unique(matrix * 8).tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(vectors @ matrix, first, atol=1e-3, rtol=1e-4)
    # Johnson-Lindenstrauss: squared norms kept on average
    ratio = (first.norm(dim=1) ** 2 / vectors.norm(dim=1) ** 2).mean()
    assert 0.7 < float(ratio) < 1.3


def test_adam_direction_is_less_s_formula():
    g = torch.tensor([[0.5, -1.0, 0.0]])
    m, v = torch.tensor([0.1, 0.2, -0.3]), torch.tensor([0.01, 0.04, 0.0])
    expected = (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g**2 + 1e-8)
    torch.testing.assert_close(adam_update_direction(g, m, v), expected)


# ----------------------------------------------------------------------------------------------
# LESS warmup and gradient features


def test_warmup_writes_one_checkpoint_per_epoch(less_warmup):
    out, settings, log = less_warmup
    files = checkpoint_files(out, settings.epochs)
    assert [f.name for f in files] == ["checkpoint-1.pt", "checkpoint-2.pt"]
    saved = [torch.load(f, weights_only=True) for f in files]
    assert [s["epoch"] for s in saved] == [1, 2]
    # the epoch's mean learning rate of the linear schedule: the first epoch's is higher
    assert saved[0]["learning_rate"] > saved[1]["learning_rate"] > 0
    names = sorted(saved[0]["trainable"])
    assert names and all("lora_" in n for n in names)
    assert sorted(saved[0]["exp_avg"]) == names == sorted(saved[0]["exp_avg_sq"])
    assert not torch.equal(saved[0]["trainable"][names[0]], saved[1]["trainable"][names[0]])
    assert (out / "warmup.json").is_file()
    assert len(log["examples"]) == 2 * 3  # half of every 6-example dataset


def test_gradient_features_equal_a_direct_computation(
    tmp_path, tiny_llama_dir, tiny_pool, less_warmup
):
    """Pool features: the Adam-normalised gradient of each example alone (a plain backward),
    projected with the seeded matrix; query features: the plain gradient."""
    warmup, settings, _ = less_warmup
    data = next(iter(tiny_pool.values()))
    queries = _write_queries(tmp_path / "queries.jsonl")
    for path, is_query in ((data, False), (queries, True)):
        out = tmp_path / f"features_{is_query}.pt"
        run_less_gradients(
            base_model=str(tiny_llama_dir),
            warmup_dir=warmup,
            data_path=path,
            output=out,
            settings=settings,
            queries=is_query,
        )
        features = load_features([out])
        model, tokenizer = _lora_with_nonzero_b(tiny_llama_dir)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        examples = load_queries(path).examples if is_query else load_jsonl_examples(path)
        encoded = encode_examples(
            examples,
            tokenizer,
            full_sequence_prediction=False,
            max_sequence_length=160,
            template=QUERY_TEMPLATE if is_query else "less",  # LESS's validation / train format
        )
        projection = RademacherProjection(
            len(
                torch.cat(
                    [p.reshape(-1) for p in [dict(model.named_parameters())[n] for n in names]]
                )
            ),
            settings.projection_dim,
            settings.seed,
        )
        weights = []
        for c, checkpoint in enumerate(checkpoint_files(warmup, settings.epochs)):
            saved = torch.load(checkpoint, weights_only=True)
            weights.append(saved["learning_rate"])
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name in saved["trainable"]:
                        parameter.copy_(saved["trainable"][name])
            m = torch.cat([saved["exp_avg"][n].reshape(-1) for n in names])
            v = torch.cat([saved["exp_avg_sq"][n].reshape(-1) for n in names])
            for row, item in enumerate(encoded[:4]):
                model.zero_grad()
                logits = model(input_ids=torch.tensor([item.input_ids])).logits
                causal_lm_loss(logits, torch.tensor([item.labels]), sample_wise=False).backward()
                grad = torch.cat(
                    [dict(model.named_parameters())[n].grad.reshape(-1) for n in names]
                )
                if not is_query:
                    grad = (0.9 * m + 0.1 * grad) / torch.sqrt(0.999 * v + 0.001 * grad**2 + 1e-8)
                expected = projection.project(grad[None])[0]
                torch.testing.assert_close(
                    features.features[c, row], expected, atol=1e-4, rtol=1e-3
                )
        assert features.checkpoint_weights.tolist() == pytest.approx(weights)
        assert (features.tasks is not None) == is_query
        assert not Path(f"{out}.shards").exists()  # removed once the file is written


def test_killed_gradient_job_resumes_to_identical_features(
    tmp_path, tiny_llama_dir, tiny_pool, less_warmup
):
    """SIGKILL after the second shard; the rerun computes only the missing shards and writes the
    same features as an uninterrupted run."""
    warmup, settings, _ = less_warmup
    data = next(iter(tiny_pool.values()))
    reference = tmp_path / "reference.pt"
    run_less_gradients(
        base_model=str(tiny_llama_dir),
        warmup_dir=warmup,
        data_path=data,
        output=reference,
        settings=settings,
    )
    killed = tmp_path / "killed.pt"
    script = f"""
import os, signal
import selectmoe.stages.less as less
from selectmoe.stages.less import LessSettings, run_less_gradients
saves = []
original = less.write_digest_sidecar
def save_then_die(path):
    original(path)
    saves.append(path)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
less.write_digest_sidecar = save_then_die
run_less_gradients(base_model={str(tiny_llama_dir)!r}, warmup_dir={str(warmup)!r},
    data_path={str(data)!r}, output={str(killed)!r}, settings=LessSettings(**{LESS_SMALL!r}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    shards = sorted(p.name for p in Path(f"{killed}.shards").glob("checkpoint*.pt"))
    assert len(shards) == 2 and not killed.exists()
    report = run_less_gradients(
        base_model=str(tiny_llama_dir),
        warmup_dir=warmup,
        data_path=data,
        output=killed,
        settings=settings,
    )
    assert report["shards_computed"] == report["shards"] - 2
    assert torch.equal(load_features([killed]).features, load_features([reference]).features)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_gradient_shard_is_computed_again(
    less_warmup, tiny_llama_dir, tiny_pool, tmp_path, monkeypatch, caplog
):
    """A shard whose bytes changed after it was written (its sidecar disagrees) is not read but
    computed again; the features equal the undisturbed run's."""
    import selectmoe.stages.less as less

    warmup, settings, _ = less_warmup
    data = next(iter(tiny_pool.values()))

    def gradients(output: Path) -> dict:
        return run_less_gradients(
            base_model=str(tiny_llama_dir),
            warmup_dir=warmup,
            data_path=data,
            output=output,
            settings=settings,
        )

    reference = tmp_path / "reference.pt"
    gradients(reference)

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before the features are written")

    output = tmp_path / "damaged.pt"
    monkeypatch.setattr(less, "save_features", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        gradients(output)  # every shard written, with its sidecar
    monkeypatch.undo()
    shards = sorted(Path(f"{output}.shards").glob("checkpoint*.pt"))
    assert len(shards) >= 2
    _flip_byte(shards[1])
    caplog.set_level("WARNING")
    report = gradients(output)
    assert report["shards_computed"] == 1
    assert f"gradient shard damaged: {shards[1]}: content sha256" in caplog.text
    assert torch.equal(load_features([output]).features, load_features([reference]).features)


def test_a_damaged_less_warmup_checkpoint_stops_the_gradients_job(
    less_warmup, tiny_llama_dir, tiny_pool, tmp_path
):
    import shutil

    from selectmoe.errors import IntegrityError

    warmup, settings, _ = less_warmup
    damaged = tmp_path / "warmup"
    shutil.copytree(warmup, damaged)
    _flip_byte(damaged / "checkpoint-2.pt")
    with pytest.raises(IntegrityError, match=r"checkpoint-2\.pt: content sha256 \w+, recorded "
                       r"\w+; the LESS warmup is damaged: rerun rule less_warmup$"):  # fmt: skip
        run_less_gradients(
            base_model=str(tiny_llama_dir),
            warmup_dir=damaged,
            data_path=tiny_pool["alpha"],
            output=tmp_path / "g.pt",
            settings=settings,
        )
    assert not (tmp_path / "g.pt").exists()


def test_shards_of_other_settings_are_discarded(tmp_path, tiny_llama_dir, tiny_pool, less_warmup):
    warmup, settings, _ = less_warmup
    data = next(iter(tiny_pool.values()))
    out = tmp_path / "features.pt"
    stale = Path(f"{out}.shards")
    stale.mkdir()
    (stale / "fingerprint.txt").write_text("another run")
    torch.save(
        {"rows": torch.tensor([0]), "features": torch.zeros(1, 99)},
        stale / "checkpoint1-shard00000.pt",
    )
    report = run_less_gradients(
        base_model=str(tiny_llama_dir),
        warmup_dir=warmup,
        data_path=data,
        output=out,
        settings=settings,
    )
    assert report["shards_computed"] == report["shards"]


def test_missing_checkpoints_are_one_clear_error(tmp_path, tiny_llama_dir, tiny_pool):
    with pytest.raises(DataError, match=r"LESS warmup checkpoints missing .*checkpoint-1\.pt"):
        run_less_gradients(
            base_model=str(tiny_llama_dir),
            warmup_dir=tmp_path,
            data_path=next(iter(tiny_pool.values())),
            output=tmp_path / "f.pt",
            settings=LessSettings(**LESS_SMALL),
        )


# ----------------------------------------------------------------------------------------------
# scores and selection


def test_rds_round_robin_against_a_plain_loop():
    rng = np.random.default_rng(0)
    pool = torch.tensor(rng.normal(size=(40, 6)))
    queries = torch.tensor(rng.normal(size=(5, 6)))
    tasks = ["a", "a", "b", "b", "b"]
    indices, scores, info = rds_round_robin(pool, queries, tasks, 17)
    cos = np.array(
        [
            [float(p @ q / np.linalg.norm(p) / np.linalg.norm(q)) for q in queries.numpy()]
            for p in pool.numpy()
        ]
    )
    per_task = {t: cos[:, [i for i, x in enumerate(tasks) if x == t]].max(axis=1) for t in "ab"}
    rankings = {t: sorted(range(40), key=lambda i: (-per_task[t][i], i)) for t in "ab"}
    chosen: list[int] = []
    while len(chosen) < 17:
        for t in "ab":
            if len(chosen) == 17:
                break
            candidate = rankings[t].pop(0)
            if candidate not in chosen:
                chosen.append(candidate)
    assert indices.tolist() == chosen
    np.testing.assert_allclose(scores, np.maximum(per_task["a"], per_task["b"]), atol=1e-12)
    assert sum(info["examples_per_task"].values()) == 17


def test_less_scores_against_a_plain_loop():
    rng = np.random.default_rng(1)
    pool = torch.tensor(rng.normal(size=(2, 10, 4)))
    queries = torch.tensor(rng.normal(size=(2, 6, 4)))
    weights = torch.tensor([3.0, 1.0])
    subtasks = ["x", "x", "y", "y", "y", "z"]
    got = less_scores(pool, queries, weights, subtasks)
    w = weights.numpy() / 4

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    for i in range(10):
        influence = [
            sum(w[c] * cos(pool[c, i].numpy(), queries[c, q].numpy()) for c in range(2))
            for q in range(6)
        ]
        expected = max(np.mean([influence[q] for q in range(6) if subtasks[q] == s]) for s in "xyz")
        assert got[i] == pytest.approx(expected, abs=1e-6)


def _features(path, n, d, *, signature="m", queries=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tasks = [TASKS[i % 2] for i in range(n)] if queries else None
    save_features(
        path,
        kind="representations",
        features=torch.randn(1, n, d, generator=generator),
        sample_ids=[f"q{i}" for i in range(n)] if queries else [f"p{i}" for i in range(n)],
        datasets=["queries"] * n if queries else ["toy"] * n,
        tasks=tasks,
        subtasks=tasks,
        signature=signature,
    )
    return path


def test_targeted_selection_writes_the_selection(tmp_path):
    pool_file = tmp_path / "toy.jsonl"
    pool_file.write_text(
        "".join(
            json.dumps(
                {
                    "dataset": "toy",
                    "id": f"p{i}",
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": "a"},
                    ],
                }
            )
            + "\n"
            for i in range(20)
        )
    )
    features = _features(tmp_path / "toy_features.pt", 20, 8)
    queries = _features(tmp_path / "queries_features.pt", 4, 8, queries=True, seed=1)
    for method in ("rds", "less"):
        info = run_selection(
            [features],
            [pool_file],
            output_jsonl=tmp_path / f"{method}.jsonl",
            output_json=tmp_path / f"{method}.json",
            method=method,
            selection_percentage=0.25,
            queries_path=queries,
        )
        lines = [json.loads(x) for x in (tmp_path / f"{method}.jsonl").read_text().splitlines()]
        assert info["n_selected"] == len(lines) == 5
        assert info["targeted"] is True and info["query_tasks"] == {"alpha": 2, "beta": 2}
        assert len({x["id"] for x in lines}) == 5
        assert all(x["score"] is not None for x in lines)
    bad = _features(tmp_path / "other_queries.pt", 4, 8, queries=True, signature="another model")
    with pytest.raises(RouterDataError, match="do not match; compute both with the same model"):
        run_selection(
            [features],
            [pool_file],
            output_jsonl=tmp_path / "x.jsonl",
            output_json=tmp_path / "x.json",
            method="rds",
            selection_percentage=0.25,
            queries_path=bad,
        )
    with pytest.raises(RouterDataError, match="needs the pool's features files and the queries'"):
        run_selection(
            [features],
            [pool_file],
            output_jsonl=tmp_path / "x.jsonl",
            output_json=tmp_path / "x.json",
            method="less",
            selection_percentage=0.25,
        )
    assert not (tmp_path / "x.jsonl").exists()


def test_query_file_errors(tmp_path):
    path = _write_queries(tmp_path / "q.jsonl")
    loaded = load_queries(path)
    assert loaded.tasks == ["alpha"] * 3 + ["beta"] * 3
    assert loaded.subtasks[:3] == ["alpha-0", "alpha-1", "alpha-0"]
    record = {"dataset": "x", "id": "1", "messages": [{"role": "user", "content": "hi"}]}
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'task' is None"):
        load_queries(tmp_path / "bad.jsonl")
    record["task"] = "t"
    (tmp_path / "dup.jsonl").write_text((json.dumps(record) + "\n") * 2)
    with pytest.raises(DataError, match=r"dup\.jsonl:2: duplicate id '1' \(first on line 1\)"):
        load_queries(tmp_path / "dup.jsonl")
    with pytest.raises(DataError, match="query file not found"):
        load_queries(tmp_path / "none.jsonl")


def test_demo_queries_are_held_out():
    """The demo's query questions are neither test questions nor in the pool."""
    from selectmoe.demo.tasks import _eval_docs, query_examples
    from selectmoe.demo.world import EVAL_TASKS, _build_world

    world = _build_world(0)
    test_questions = {
        doc["question"]
        for task in EVAL_TASKS
        for doc in _eval_docs(task, world, seed=0, n_docs=120, pool_questions=set())
    }
    records = query_examples(world, seed=0, n_per_task=5, exclude=test_questions)
    assert len(records) == 5 * len(EVAL_TASKS)
    assert {r["task"] for r in records} == set(EVAL_TASKS)
    assert not {r["messages"][0]["content"] for r in records} & test_questions
    assert records == query_examples(world, seed=0, n_per_task=5, exclude=test_questions)


def test_scores_in_chunks_equal_the_whole(tmp_path, monkeypatch):
    """The pool is scored a chunk of rows at a time (bounded memory): the same selection."""
    import selectmoe.selection.targeted as targeted

    paths = [_features(tmp_path / f"p{i}.pt", 7, 5, seed=i) for i in range(2)]
    queries = targeted.load_features([_features(tmp_path / "q.pt", 4, 5, queries=True, seed=9)])
    whole = {
        m: targeted.select_targeted(m, targeted.load_features(paths), queries, 6)
        for m in ("rds", "less")
    }
    monkeypatch.setattr(targeted, "SCORE_CHUNK_ROWS", 3)
    pool = targeted.load_features(paths)
    assert [start for start, _ in pool.chunks()] == [0, 3, 6, 7, 10, 13]
    for method, (indices, scores, _) in whole.items():
        chunked_indices, chunked_scores, _ = targeted.select_targeted(method, pool, queries, 6)
        assert chunked_indices.tolist() == indices.tolist()
        np.testing.assert_allclose(chunked_scores, scores, atol=1e-12)


def test_shard_plan_groups_consecutive_batches():
    from selectmoe.stages.less import _shard_plan

    assert _shard_plan([3, 3, 3, 2], 6) == [[0, 1], [2, 3]]
    assert _shard_plan([8, 3], 4) == [[0], [1]]  # a batch larger than a shard stands alone
    assert _shard_plan([1] * 5, 2) == [[0, 1], [2, 3], [4]]


def _dense_matrix(projection) -> torch.Tensor:
    """The ``[P, d]`` matrix a sparse sign projection implies, built entry by entry."""
    from selectmoe.training.gradients import PROJECTION_BLOCK_ROWS, SPARSE_NONZEROS

    matrix = torch.zeros(projection.n_params, projection.dim)
    for index in range(-(-projection.n_params // PROJECTION_BLOCK_ROWS)):
        buckets, weights = projection.block(index, torch.device("cpu"))
        start = index * PROJECTION_BLOCK_ROWS
        for k in range(SPARSE_NONZEROS):
            for j in range(buckets.shape[1]):
                matrix[start + j, buckets[k, j]] += weights[k, j]
    return matrix


def test_the_sparse_projection_is_its_implied_matrix_and_batch_independent() -> None:
    from selectmoe.training.gradients import SPARSE_NONZEROS, SparseSignProjection

    projection = SparseSignProjection(300, 16, seed=5)
    matrix = _dense_matrix(projection)
    # every parameter has s entries of ±1/sqrt(s) (a repeated bucket adds up, as in the sum)
    assert torch.allclose((matrix**2).sum(dim=1).mean(), torch.tensor(1.0), atol=0.1)
    # entries are sums of ±1/sqrt(4) (buckets may repeat within a parameter's four)
    assert torch.equal(matrix * 2, (matrix * 2).round()) and matrix.abs().max() <= 2
    assert ((matrix != 0).sum(dim=1) >= 1).all()
    vectors = torch.randn(7, 300, generator=torch.Generator().manual_seed(0))
    projected = projection.project(vectors)
    torch.testing.assert_close(projected, vectors @ matrix, rtol=1e-5, atol=1e-5)
    assert torch.equal(projection.project(vectors[2:5]), projected[2:5])  # batch-independent
    assert torch.equal(SparseSignProjection(300, 16, seed=5).project(vectors), projected)
    assert not torch.allclose(SparseSignProjection(300, 16, seed=6).project(vectors), projected)
    assert SPARSE_NONZEROS == 4


def test_the_sparse_projection_keeps_inner_products_as_well_as_the_dense_one() -> None:
    """Cosines of 32 random vectors of 50,000 parameters projected to 512: the sparse projection's
    largest error is within 1.5x the dense Rademacher projection's (both ~ 3.5/sqrt(d))."""
    from selectmoe.training.gradients import RademacherProjection, SparseSignProjection

    vectors = torch.randn(32, 50_000, generator=torch.Generator().manual_seed(1))

    def cosines(x: torch.Tensor) -> torch.Tensor:
        unit = x / x.norm(dim=1, keepdim=True)
        return unit @ unit.T

    exact = cosines(vectors)
    sparse = (cosines(SparseSignProjection(50_000, 512, 0).project(vectors)) - exact).abs().max()
    dense = (cosines(RademacherProjection(50_000, 512, 0).project(vectors)) - exact).abs().max()
    assert sparse < 1.5 * dense and sparse < 4 / 512**0.5


def test_less_gradients_with_the_sparse_projection(
    less_warmup, tiny_llama_dir, tiny_pool, tmp_path
):
    from dataclasses import replace

    warmup, settings, _ = less_warmup
    data = next(iter(tiny_pool.values()))
    outputs = {}
    for kind in ("sparse", "rademacher"):
        outputs[kind] = tmp_path / f"{kind}.pt"
        run_less_gradients(
            base_model=str(tiny_llama_dir),
            warmup_dir=warmup,
            data_path=data,
            output=outputs[kind],
            settings=replace(settings, projection=kind),
        )
    sparse, dense = load_features([outputs["sparse"]]), load_features([outputs["rademacher"]])
    assert sparse.features.shape == dense.features.shape
    assert torch.isfinite(sparse.features).all() and not torch.equal(
        sparse.features, dense.features
    )
    with pytest.raises(ConfigError, match=r"targeted\.less\.projection is .gaussian."):
        replace(settings, projection="gaussian")
