"""Stage 1 (warmup of gates and routers) and stage 2 (router data per dataset)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from selectmoe.data.encoding import encode_examples
from selectmoe.data.pool import load_pool
from selectmoe.data.router_data import ANSWER_LOSS_QUANTILES, ROUTER_DATA_KEYS
from selectmoe.errors import ConfigError, DataError, ModelError
from selectmoe.hashing import file_sha256
from selectmoe.model.warmed import load_warmed_model
from selectmoe.stages.scoring import answer_alone_losses, score_dataset
from selectmoe.stages.warmup import FULL_RANK_TARGETS, WarmupSettings, run_warmup

TRAINED = [f"model.layers.{i}.{suffix}" for i in range(2) for suffix in FULL_RANK_TARGETS]
LM_STATISTICS = ("answer_loss", "eos_loss", "answer_loss_quantiles", "answer_loss_worst_turn")
NOT_STATISTICS = {"sample_ids", "dataset", "n_tokens", "metadata"}


def _settings(**changes: Any) -> WarmupSettings:
    values: dict[str, Any] = {
        "subset_ratio": 1.0,
        "per_device_batch_size": 4,
        "effective_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 3,
        "quality_loss_type": "mse",
        "quality_loss_weight": 0.5,
        "device": "cpu",
        "log_every": 1,
    }
    values.update(changes)
    return WarmupSettings(**values)


@pytest.fixture(scope="module")
def warmup(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_converted_dir: Path,
    tiny_pool: dict[str, Path],
) -> dict[str, Any]:
    """One warmup run; also keeps the full state of the model as training left it."""
    import selectmoe.stages.warmup as warmup_module

    original = warmup_module.train_loop
    captured: dict[str, torch.Tensor] = {}

    def spy(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        captured.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return result

    output = tmp_path_factory.mktemp("warmup") / "full_rank_weights.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(warmup_module, "train_loop", spy)
        returned = run_warmup(
            model_dir=tiny_converted_dir,
            pool_files=[tiny_pool["alpha"], tiny_pool["beta"]],
            output_path=output,
            settings=_settings(),
        )
    return {"path": output, "returned": returned, "trained_state": captured}


@pytest.fixture(scope="module")
def alpha_file(tmp_path_factory: pytest.TempPathFactory, tiny_pool: dict[str, Path]) -> Path:
    """The alpha examples in reverse order: file order is neither id order nor length order."""
    path = tmp_path_factory.mktemp("alpha") / "alpha_data.jsonl"
    path.write_text("\n".join(reversed(tiny_pool["alpha"].read_text().splitlines())) + "\n")
    return path


@pytest.fixture(scope="module")
def router_data(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_converted_dir: Path,
    alpha_file: Path,
    warmup: dict[str, Any],
) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("router") / "alpha_router_data.pt"
    summary = _score(tiny_converted_dir, warmup["path"], alpha_file, output)
    return {"path": output, "summary": summary, "data": torch.load(output, weights_only=False)}


def _score(model_dir: Path, weights: Path | None, pool_file: Path, output: Path) -> dict:
    """Score the alpha dataset in batches of 4, at most 64 tokens, on the CPU."""
    return score_dataset(
        model_dir=model_dir,
        weights_path=weights,
        pool_files=[pool_file],
        dataset="alpha",
        output_path=output,
        batch_size=4,
        max_sequence_length=64,
        device="cpu",
        progress=False,
    )


# ----------------------------------------------------------------------------------------------
# warmup


def test_warmup_changes_only_gates_and_routers(
    warmup: dict[str, Any], tiny_converted_dir: Path
) -> None:
    from selectmoe import SelectMoeForCausalLM

    before = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).state_dict()
    after = warmup["trained_state"]
    assert before.keys() == after.keys()
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert changed == sorted(TRAINED)
    assert len(before) == 27  # 25 OLMoE tensors + 2 gates: every other one is bit-identical


def test_weights_file_layout(warmup: dict[str, Any]) -> None:
    payload = torch.load(warmup["path"], weights_only=False)
    assert {"weights", "peft_mode", "target_patterns", "config"} <= payload.keys()
    assert sorted(payload["weights"]) == sorted(TRAINED)
    assert payload["peft_mode"] == "full_rank"
    assert payload["target_patterns"] == ["quality_gate.weight", "mlp.gate.weight"]
    for name, tensor in payload["weights"].items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, warmup["trained_state"][name])
    assert payload["weights"]["model.layers.0.quality_gate.weight"].shape == (1, 32)
    assert payload["weights"]["model.layers.0.mlp.gate.weight"].shape == (8, 32)
    config = payload["config"]
    assert config["model_overrides"]["quality_loss_type"] == "mse"
    assert config["model_overrides"]["quality_loss_weight"] == 0.5
    assert config["settings"]["learning_rate"] == 1e-2
    assert config["n_examples"] == 12
    assert payload["optimizer_steps"] == 3
    assert [record["step"] for record in payload["history"]] == [1, 2, 3]
    assert all(record["quality_loss"] > 0 for record in payload["history"])
    # the fixture trains with the mse loss, E[good^2]; the gates barely move from their init, so
    # good is nearly constant and the loss is close to the square of the logged good_mean
    for record in payload["history"]:
        assert 0.0 < record["good_mean"] < 1.0
        assert record["quality_loss"] == pytest.approx(record["good_mean"] ** 2, abs=0.01)
    assert warmup["returned"] == {k: v for k, v in payload.items() if k != "weights"}
    json.dumps(payload["config"])  # the config is plain data


def test_load_warmed_model_applies_weights_and_overrides(
    warmup: dict[str, Any], tiny_converted_dir: Path
) -> None:
    model, _ = load_warmed_model(tiny_converted_dir, warmup["path"])
    assert not model.training
    assert model.config.quality_loss_type == "mse"
    assert model.config.quality_loss_weight == 0.5
    state = model.state_dict()
    for name, tensor in warmup["trained_state"].items():
        assert torch.equal(state[name], tensor), name


def test_warmup_is_seeded(
    warmup: dict[str, Any], tiny_converted_dir: Path, tiny_pool: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "again.pt"
    run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=[tiny_pool["alpha"], tiny_pool["beta"]],
        output_path=output,
        settings=_settings(),
    )
    first = torch.load(warmup["path"], weights_only=False)["weights"]
    second = torch.load(output, weights_only=False)["weights"]
    assert all(torch.equal(first[name], second[name]) for name in TRAINED)


def test_warmup_errors_write_nothing(
    tiny_converted_dir: Path, tiny_pool: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "w.pt"
    with pytest.raises(ConfigError, match=r"unknown quality_loss_type 'nope'; valid types: "):
        _settings(quality_loss_type="nope")
    with pytest.raises(ConfigError, match=r"warmup.peft_mode is 'dora'; allowed: full_rank"):
        _settings(peft_mode="dora")
    with pytest.raises(ConfigError, match=r"warmup.subset_ratio is 0; it must be in \(0, 1\]"):
        _settings(subset_ratio=0)
    with pytest.raises(ModelError, match="converted model not found"):
        run_warmup(
            model_dir=tmp_path / "none",
            pool_files=[tiny_pool["alpha"]],
            output_path=output,
            settings=_settings(),
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dataset": "x", "id": "1"}\n')
    with pytest.raises(DataError, match=re.escape(f"{bad}:1: missing field 'messages'")):
        run_warmup(
            model_dir=tiny_converted_dir,
            pool_files=[bad],
            output_path=output,
            settings=_settings(),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# ----------------------------------------------------------------------------------------------
# scoring


def test_router_data_layout(router_data: dict[str, Any], warmup: dict[str, Any]) -> None:
    data = router_data["data"]
    assert set(data) == set(ROUTER_DATA_KEYS) | set(LM_STATISTICS) | {
        "quality_good",
        "quality_score_answer",
        "n_answer_tokens",
    }
    assert router_data["summary"]["statistics"] == sorted(set(data) - NOT_STATISTICS)
    assert data["quality_score"].dtype == torch.float32
    assert data["moe_probs"].dtype == torch.float32
    assert data["quality_score"].shape == (6, 2)
    assert data["moe_probs"].shape == (6, 2, 8)
    assert torch.isfinite(data["quality_score"]).all() and torch.isfinite(data["moe_probs"]).all()
    torch.testing.assert_close(data["moe_probs"].sum(-1), torch.ones(6, 2), rtol=0, atol=1e-5)
    assert data["sample_ids"] == [f"alpha_{i}" for i in reversed(range(6))]  # file order
    assert data["dataset"] == "alpha"
    metadata = data["metadata"]
    assert metadata["weights_sha256"] == file_sha256(warmup["path"])
    assert metadata["max_sequence_length"] == 64
    assert metadata["quality_loss_type"] == "mse"
    assert router_data["summary"]["n_samples"] == 6
    assert router_data["summary"]["shape"] == [6, 2, 8]


def test_router_data_values_are_per_sample_means(
    router_data: dict[str, Any],
    warmup: dict[str, Any],
    tiny_converted_dir: Path,
    alpha_file: Path,
    tiny_tokenizer,
) -> None:
    """Every statistic equals the one computed from a plain transformers forward, one example at
    a time: router means over all tokens and over the answer, the LM's answer loss (the forward's
    own ``loss`` with the SFT labels) and the loss of the answer's end-of-sequence tokens."""
    model, _ = load_warmed_model(tiny_converted_dir, warmup["path"])
    examples = load_pool([alpha_file])
    encoded = encode_examples(
        examples, tiny_tokenizer, full_sequence_prediction=False, max_sequence_length=64
    )
    data = router_data["data"]
    eos = tiny_tokenizer.eos_token_id
    seen = {"answer": 0, "no answer": 0, "eos": 0, "eos cut": 0}
    for row in range(len(examples)):
        ids = torch.tensor([encoded[row].input_ids])
        labels = torch.tensor([encoded[row].labels])
        with torch.no_grad():
            output = model(input_ids=ids, output_router_logits=True)
        routers = output.router_logits
        answer = labels[0] != -100
        gate = [r["quality_score"].view(-1) for r in routers]
        expected = {
            "quality_score": torch.stack([g.mean() for g in gate]),
            "quality_good": torch.stack([torch.sigmoid(g).mean() for g in gate]),
            "moe_probs": torch.stack([torch.softmax(r["moe_logits"], -1).mean(0) for r in routers]),
        }
        for key, value in expected.items():
            torch.testing.assert_close(data[key][row], value, rtol=0, atol=1e-5)
        assert data["n_answer_tokens"][row] == int(answer.sum())
        if not answer[1:].any():  # the answer was truncated away: no answer statistics
            seen["no answer"] += 1
            assert data["answer_loss"][row].isnan() and data["eos_loss"][row].isnan()
            assert data["answer_loss_quantiles"][row].isnan().all()
            assert data["answer_loss_worst_turn"][row].isnan()
            continue
        seen["answer"] += 1
        answer_score = torch.stack([g[answer].mean() for g in gate])
        torch.testing.assert_close(
            data["quality_score_answer"][row], answer_score, rtol=0, atol=1e-5
        )
        # the LM loss of the answer from the forward's full logits (label shifted by one)
        token_losses = torch.nn.functional.cross_entropy(
            output.logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none"
        )
        answer_loss = token_losses[labels[0, 1:] != -100].mean()
        torch.testing.assert_close(data["answer_loss"][row], answer_loss, rtol=0, atol=1e-5)
        # quantiles of the answer-token losses, and the worst turn (a run of labelled tokens)
        answer_losses = token_losses[labels[0, 1:] != -100]
        levels = torch.tensor(ANSWER_LOSS_QUANTILES)
        torch.testing.assert_close(
            data["answer_loss_quantiles"][row],
            torch.quantile(answer_losses, levels),
            rtol=0,
            atol=1e-5,
        )
        turns: list[list[float]] = []
        previous = None
        for position in torch.nonzero(labels[0, 1:] != -100).view(-1).tolist():
            if previous is None or position != previous + 1:
                turns.append([])
            turns[-1].append(float(token_losses[position]))
            previous = position
        seen["turns"] = max(seen.get("turns", 0), len(turns))
        worst = max(sum(turn) / len(turn) for turn in turns)
        assert float(data["answer_loss_worst_turn"][row]) == pytest.approx(worst, abs=1e-5)
        at_eos = labels[0, 1:] == eos
        if at_eos.any():
            seen["eos"] += 1
            expected_eos = token_losses[at_eos].mean()
            torch.testing.assert_close(data["eos_loss"][row], expected_eos, rtol=0, atol=1e-5)
        else:  # the answer was cut before its end-of-sequence token
            seen["eos cut"] += 1
            assert data["eos_loss"][row].isnan()
    assert seen["answer"] and seen["no answer"] and seen["eos"], seen
    assert seen["turns"] >= 2, seen  # a multi-turn answer's worst turn was checked
    assert data["n_tokens"].tolist() == [len(e.input_ids) for e in encoded]
    # examples differ in length, so the batches really were padded
    assert len({len(e.input_ids) for e in encoded}) > 1


def test_answer_alone_losses_are_the_loss_of_the_answer_without_its_question(
    warmup: dict[str, Any], tiny_converted_dir: Path, alpha_file: Path, tiny_tokenizer
) -> None:
    """IFD's denominator, as Cherry-LLM computes it: the answer tokenized on its own (with the
    tokenizer's special tokens), every token after the first scored; batched or not the same."""
    model, _ = load_warmed_model(tiny_converted_dir, warmup["path"])
    examples = load_pool([alpha_file])
    losses = answer_alone_losses(
        model,
        examples,
        tiny_tokenizer,
        batch_size=4,
        max_sequence_length=64,
        device=torch.device("cpu"),
        chunk_tokens=5,
    )
    assert losses.shape == (len(examples),)
    for row, example in enumerate(examples):
        answers = [m["content"].strip() for m in example.messages if m["role"] == "assistant"]
        text = "\n".join(a + tiny_tokenizer.eos_token for a in answers)
        ids = torch.tensor([tiny_tokenizer(text)["input_ids"][:64]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        torch.testing.assert_close(losses[row], expected, rtol=0, atol=1e-5)


def test_untrained_scoring_reads_the_converted_gates(
    router_data: dict[str, Any],
    tiny_converted_dir: Path,
    alpha_file: Path,
    tiny_tokenizer,
    tmp_path: Path,
) -> None:
    """Without warmup weights the converted model is scored as it is: the diagnostics' control."""
    from selectmoe.model.modeling_select_moe import SelectMoeForCausalLM, register_select_moe

    output = tmp_path / "alpha_router_data.pt"
    summary = _score(tiny_converted_dir, None, alpha_file, output)
    assert summary["weights"] is None and summary["weights_sha256"] is None
    data = torch.load(output, weights_only=False)
    assert data["sample_ids"] == router_data["data"]["sample_ids"]
    assert data["n_tokens"].tolist() == router_data["data"]["n_tokens"].tolist()
    assert not torch.allclose(data["quality_score"], router_data["data"]["quality_score"])
    register_select_moe()
    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir)
    encoded = encode_examples(
        load_pool([alpha_file]),
        tiny_tokenizer,
        full_sequence_prediction=True,
        max_sequence_length=64,
    )
    with torch.no_grad():
        routers = model(
            input_ids=torch.tensor([encoded[0].input_ids]), output_router_logits=True
        ).router_logits
    expected = torch.stack([r["quality_score"].mean() for r in routers])
    torch.testing.assert_close(data["quality_score"][0], expected, rtol=0, atol=1e-5)


def test_scores_do_not_depend_on_batching(
    router_data: dict[str, Any],
    warmup: dict[str, Any],
    tiny_converted_dir: Path,
    alpha_file: Path,
    tmp_path: Path,
) -> None:
    output = tmp_path / "alpha_router_data.pt"
    score_dataset(
        model_dir=tiny_converted_dir,
        weights_path=warmup["path"],
        pool_files=[alpha_file],
        dataset="alpha",
        output_path=output,
        batch_size=1,
        max_sequence_length=64,
        device="cpu",
        progress=False,
    )
    single = torch.load(output, weights_only=False)
    batched = router_data["data"]
    assert single["sample_ids"] == batched["sample_ids"]
    for key in ("quality_score", "moe_probs", "quality_score_answer", *LM_STATISTICS):
        torch.testing.assert_close(single[key], batched[key], rtol=0, atol=1e-5, equal_nan=True)


def test_foreign_example_in_dataset_dir(
    warmup: dict[str, Any], tiny_converted_dir: Path, tiny_pool: dict[str, Path], tmp_path: Path
) -> None:
    mixed = tmp_path / "alpha" / "alpha_data.jsonl"
    mixed.parent.mkdir()
    alpha_lines = tiny_pool["alpha"].read_text().splitlines()
    beta_lines = tiny_pool["beta"].read_text().splitlines()
    lines = [alpha_lines[0], alpha_lines[1], beta_lines[0]]
    mixed.write_text("\n".join(lines) + "\n")
    output = tmp_path / "alpha_router_data.pt"
    pattern = re.escape(f"{mixed}:3: example of dataset 'beta' in the files of dataset 'alpha'")
    with pytest.raises(DataError, match=pattern):
        score_dataset(
            model_dir=tiny_converted_dir,
            weights_path=warmup["path"],
            pool_files=[mixed],
            dataset="alpha",
            output_path=output,
            device="cpu",
            progress=False,
        )
    assert not output.exists()


def test_missing_or_bad_weights(
    tiny_converted_dir: Path, tiny_pool: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "alpha_router_data.pt"

    def score(weights: Path) -> None:
        score_dataset(
            model_dir=tiny_converted_dir,
            weights_path=weights,
            pool_files=[tiny_pool["alpha"]],
            dataset="alpha",
            output_path=output,
            device="cpu",
            progress=False,
        )

    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelError, match=re.escape(f"{missing}: warmup weights not found")):
        score(missing)
    junk = tmp_path / "junk.pt"
    torch.save({"state": 1}, junk)
    with pytest.raises(ModelError, match=re.escape(f"{junk}: not a warmup weights file")):
        score(junk)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=re.escape(f"{garbage}: cannot be read as warmup weights")):
        score(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save(
        {"weights": {"model.nope.weight": torch.zeros(1)}, "peft_mode": "full_rank"}, foreign
    )
    with pytest.raises(ModelError, match=r"tensors not in .*model\.nope\.weight"):
        score(foreign)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({"weights": {TRAINED[0]: torch.zeros(2, 32)}, "peft_mode": "full_rank"}, wrong_shape)
    with pytest.raises(ModelError, match=r"has shape \(2, 32\), the model expects \(1, 32\)"):
        score(wrong_shape)
    assert not output.exists()


def test_scoring_never_builds_sequence_logits(
    warmup: dict[str, Any], tiny_converted_dir: Path, alpha_file: Path, tiny_tokenizer
) -> None:
    """Router data alone never runs the LM head; the LM statistics run it on the answer tokens
    only, ``chunk_tokens`` at a time: no ``[B, T, vocab]`` tensor is built."""
    from selectmoe.data.encoding import pad_token_id_of
    from selectmoe.stages.scoring import compute_example_statistics, compute_router_data

    model, _ = load_warmed_model(tiny_converted_dir, warmup["path"])
    calls: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    encoded = encode_examples(
        load_pool([alpha_file]),
        tiny_tokenizer,
        full_sequence_prediction=False,
        max_sequence_length=64,
    )
    common = {
        "batch_size": 3,
        "pad_token_id": pad_token_id_of(tiny_tokenizer),
        "device": torch.device("cpu"),
        "progress": False,
    }
    quality, probs = compute_router_data(model, encoded, **common)
    assert calls == []
    assert quality.shape == (len(encoded), 2) and probs.shape == (len(encoded), 2, 8)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(encoded), 2), rtol=0, atol=1e-5)

    chunked = compute_example_statistics(
        model, encoded, **common, eos_token_id=tiny_tokenizer.eos_token_id, chunk_tokens=7
    )
    vocab = model.config.vocab_size
    answer_tokens = sum(sum(label != -100 for label in e.labels[1:]) for e in encoded)
    assert calls and all(len(shape) == 2 and shape[0] <= 7 and shape[1] == vocab for shape in calls)
    assert sum(shape[0] for shape in calls) == answer_tokens
    whole = compute_example_statistics(
        model, encoded, **common, eos_token_id=tiny_tokenizer.eos_token_id, chunk_tokens=4096
    )
    for key in LM_STATISTICS:
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="eos token id"):
        compute_example_statistics(model, encoded, **common)
