"""Stage 4 tests: lm-eval on a tiny local Llama, a local multiple-choice task and a LoRA adapter.

Everything is built in a temporary directory; no network, no model hub.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from selectmoe.data.lm_eval_results import load_results, read_task_metrics
from selectmoe.errors import EvaluationError, SelectMoeError
from selectmoe.stages.evaluation import evaluate_adapters, run_lm_eval

N_DOCS = 10
COLOURS = ["red", "blue", "green", "yellow"]
THINGS = ["sky", "grass", "sun", "sea", "cat", "dog", "a", "b", "c", "d"]
# The embedding is padded beyond the tokenizer (as Qwen2.5's is): lm-eval would shrink it.
EMBEDDING_PADDING = 8
LORA_PARAMS = 2 * 2 * (32 * 4 + 4 * 32)  # layers x (q, v) x (A + B) with hidden 32, r 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama + tokenizer, a LoRA adapter that changes its outputs, and a local task."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        return _build_assets(tmp_path_factory.mktemp("eval"))


def _build_assets(root: Path) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "Question", ":", "Answer", "what", "colour"]
    words += ["is", "the", "?", *COLOURS, *THINGS]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = LlamaConfig(
        vocab_size=len(vocab) + EMBEDDING_PADDING,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    with warnings.catch_warnings():
        # peft 0.21 calls an API that transformers 5 deprecates; not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(
            LlamaForCausalLM.from_pretrained(model_dir),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )
    with torch.no_grad():
        # LoRA starts with B = 0 (a no-op); random B makes the adapter change the outputs.
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 1.0)
    adapter_dir = root / "adapter"
    peft_model.save_pretrained(adapter_dir)

    task_dir = root / "tasks"
    task_dir.mkdir()
    data_file = task_dir / "tiny_colours.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for i, thing in enumerate(THINGS):
            doc = {"question": f"what colour is the {thing} ?", "choices": COLOURS, "label": i % 4}
            handle.write(json.dumps(doc) + "\n")
    (task_dir / "tiny_colours.yaml").write_text(
        "task: tiny_colours\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data_file}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question : {{question}} Answer :"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "  - metric: acc_norm\n"
        "metadata:\n"
        "  version: 1.0\n",
        encoding="utf-8",
    )
    return {"model": model_dir, "adapter": adapter_dir, "tasks": task_dir, "root": root}


@pytest.fixture(scope="module")
def base_run(assets: dict[str, Path]) -> dict[str, object]:
    out = assets["root"] / "runs" / "base.json"
    samples = assets["root"] / "runs" / "base_samples.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        returned = run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=None,
            tasks=["tiny_colours"],
            include_path=str(assets["tasks"]),
            output_json=out,
            samples_jsonl=samples,
            batch_size=8,
            seed=7,
        )
    return {"path": out, "samples": samples, "returned": returned}


@pytest.fixture(scope="module")
def adapter_run(assets: dict[str, Path]) -> dict[str, object]:
    out = assets["root"] / "runs" / "adapter.json"
    samples = assets["root"] / "runs" / "adapter_samples.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        returned = run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=str(assets["adapter"]),
            tasks=["tiny_colours"],
            include_path=str(assets["tasks"]),
            output_json=out,
            samples_jsonl=samples,
            batch_size=8,
            seed=7,
        )
    return {"path": out, "samples": samples, "returned": returned}


def _strict_json(path: Path) -> dict:
    """Parse ``path`` refusing NaN/Infinity, which are not JSON."""

    def reject(constant: str) -> None:
        raise AssertionError(f"{path} holds the non-JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def _loglikelihoods(path: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [[choice[0] for choice in row["filtered_resps"]] for row in rows]


# --------------------------------------------------------------------------- end to end


def test_base_run_writes_results(base_run: dict[str, object]) -> None:
    data = _strict_json(base_run["path"])
    assert data == base_run["returned"]
    entry = data["results"]["tiny_colours"]
    assert 0.0 <= entry["acc,none"] <= 1.0
    assert 0.0 <= entry["acc_norm,none"] <= 1.0
    assert "acc_stderr,none" in entry
    assert data["n-samples"]["tiny_colours"] == {"original": N_DOCS, "effective": N_DOCS}
    assert data["versions"]["tiny_colours"] == 1.0
    assert data["configs"]["tiny_colours"]["output_type"] == "multiple_choice"
    assert "samples" not in data  # per-sample logs never go into the results JSON

    block = data["selectmoe"]
    assert block["adapter"] is None
    assert block["tasks"] == ["tiny_colours"]
    assert block["seed"] == 7
    assert block["batch_size"] == 8
    assert block["wall_time_s"] > 0
    # the evaluation contract, recorded while the task's data file is at hand
    from selectmoe.data.lm_eval_results import config_digest

    assert block["contracts"] == {
        "tiny_colours": {
            "lm_eval": data["lm_eval_version"],
            "task_version": 1.0,
            "n_shot": data["n-shot"]["tiny_colours"],
            "config": config_digest(data["configs"]["tiny_colours"]),
        }
    }
    assert "peft" not in data["config"]["model_args"]
    # All four of lm-eval's seeds come from the one seed argument.
    for key in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed"):
        assert data["config"][key] == 7


def test_samples_jsonl_has_one_line_per_document(base_run: dict[str, object]) -> None:
    lines = Path(base_run["samples"]).read_text(encoding="utf-8").splitlines()
    assert len(lines) == N_DOCS
    record = json.loads(lines[0])
    assert record["task"] == "tiny_colours"
    assert len(record["filtered_resps"]) == len(COLOURS)
    assert set(record["metrics"]) == {"acc", "acc_norm"}


def test_adapter_is_loaded_and_changes_outputs(
    base_run: dict[str, object], adapter_run: dict[str, object], assets: dict[str, Path]
) -> None:
    base = _strict_json(base_run["path"])
    tuned = _strict_json(adapter_run["path"])
    assert tuned["config"]["model_args"]["peft"] == str(assets["adapter"].resolve())
    assert tuned["selectmoe"]["adapter"] == str(assets["adapter"])
    # Exactly the LoRA weights are added: lm-eval's stock loader would also have shrunk the
    # padded embedding and output matrices to the tokenizer's length.
    added = tuned["config"]["model_num_parameters"] - base["config"]["model_num_parameters"]
    assert added == LORA_PARAMS
    base_ll = _loglikelihoods(base_run["samples"])
    tuned_ll = _loglikelihoods(adapter_run["samples"])
    assert len(base_ll) == len(tuned_ll) == N_DOCS
    differences = [
        abs(a - b)
        for doc_a, doc_b in zip(base_ll, tuned_ll, strict=True)
        for a, b in zip(doc_a, doc_b, strict=True)
    ]
    assert max(differences) > 1e-3


def _second_adapter(assets: dict[str, Path]) -> Path:
    """Another adapter of the same shape with other weights."""
    from safetensors.torch import load_file, save_file

    second = assets["root"] / "adapter2"
    if not second.exists():
        second.mkdir()
        for item in assets["adapter"].iterdir():
            (second / item.name).write_bytes(item.read_bytes())
        weights = load_file(second / "adapter_model.safetensors")
        save_file(
            {name: -0.5 * tensor for name, tensor in weights.items()},
            second / "adapter_model.safetensors",
        )
    return second


def test_several_adapters_on_one_loaded_model_equal_separate_runs(
    assets: dict[str, Path],
    base_run: dict[str, object],
    adapter_run: dict[str, object],
    tmp_path: Path,
) -> None:
    """Attach, evaluate, unload, next: the same numbers as a fresh model per adapter."""
    second = _second_adapter(assets)
    adapters = [str(assets["adapter"]), None, str(second), str(assets["adapter"])]
    outputs = [tmp_path / f"r{i}.json" for i in range(4)]
    samples = [tmp_path / f"s{i}.jsonl" for i in range(4)]
    options = {"tasks": ["tiny_colours"], "include_path": str(assets["tasks"]), "batch_size": 8}
    returned = evaluate_adapters(
        pretrained=str(assets["model"]),
        adapters=adapters,
        output_jsons=outputs,
        samples_jsonls=samples,
        seed=7,
        **options,
    )
    assert [r["selectmoe"]["adapter"] for r in returned] == adapters
    separate = tmp_path / "separate.json"
    run_lm_eval(
        pretrained=str(assets["model"]),
        adapter=str(second),
        output_json=separate,
        samples_jsonl=tmp_path / "separate.jsonl",
        seed=7,
        **options,
    )
    expected = [
        adapter_run["samples"],
        base_run["samples"],
        tmp_path / "separate.jsonl",
        adapter_run["samples"],
    ]
    flat = [[value for doc in _loglikelihoods(path) for value in doc] for path in samples]
    for got, want in zip(flat, expected, strict=True):
        reference = [value for doc in _loglikelihoods(want) for value in doc]
        assert got == pytest.approx(reference, abs=1e-6)
    assert flat[2] != pytest.approx(flat[0], abs=1e-3)
    assert read_task_metrics(outputs[2]) == read_task_metrics(separate)
    with pytest.raises(EvaluationError, match=r"one output .* per adapter"):
        evaluate_adapters(
            pretrained=str(assets["model"]),
            adapters=[None, None],
            output_jsons=[tmp_path / "x.json"],
            **options,
        )


def test_read_task_metrics_on_run(base_run: dict[str, object]) -> None:
    metrics = read_task_metrics(base_run["path"])
    raw = _strict_json(base_run["path"])["results"]["tiny_colours"]
    assert metrics == {"tiny_colours": {"acc": raw["acc,none"], "acc_norm": raw["acc_norm,none"]}}


def test_limit_and_fewshot(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "limited.json"
    data = run_lm_eval(
        pretrained=str(assets["model"]),
        adapter=None,
        tasks=["tiny_colours"],
        include_path=assets["tasks"],
        output_json=out,
        limit=3.0,
        num_fewshot=1,
    )
    assert data["n-samples"]["tiny_colours"] == {"original": N_DOCS, "effective": 3}
    assert data["n-shot"]["tiny_colours"] == 1
    assert data["selectmoe"]["limit"] == 3


# --------------------------------------------------------------------------- errors


def test_unknown_task_lists_similar_names(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    with pytest.raises(EvaluationError, match=r"unknown lm-eval task 'tiny_colour'.*tiny_colours"):
        run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=None,
            tasks=["tiny_colour"],
            include_path=str(assets["tasks"]),
            output_json=out,
        )
    assert not out.exists()


def test_missing_adapter_dir(assets: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_adapter"
    with pytest.raises(EvaluationError, match=r"adapter directory not found: .*no_such_adapter"):
        run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=str(missing),
            tasks=["tiny_colours"],
            include_path=str(assets["tasks"]),
            output_json=tmp_path / "never.json",
        )
    assert not (tmp_path / "never.json").exists()


def test_adapter_dir_without_adapter_config(assets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"has no adapter_config\.json"):
        run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=str(tmp_path),
            tasks=["tiny_colours"],
            output_json=tmp_path / "never.json",
        )


def test_missing_pretrained_dir(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"pretrained model directory not found"):
        run_lm_eval(
            pretrained=str(tmp_path / "nowhere" / "model"),
            adapter=None,
            tasks=["tiny_colours"],
            output_json=tmp_path / "never.json",
        )


def test_missing_data_file_is_reported_before_loading(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    yaml_text = (assets["tasks"] / "tiny_colours.yaml").read_text(encoding="utf-8")
    yaml_text = yaml_text.replace("task: tiny_colours", "task: tiny_broken")
    yaml_text = yaml_text.replace(str(assets["tasks"] / "tiny_colours.jsonl"), "gone/x.jsonl")
    (task_dir / "broken.yaml").write_text(yaml_text, encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"task 'tiny_broken'.*'gone/x.jsonl' not found"):
        run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=None,
            tasks=["tiny_broken"],
            include_path=task_dir,
            output_json=tmp_path / "never.json",
        )


def test_chat_template_required_when_requested(assets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="has no chat template"):
        run_lm_eval(
            pretrained=str(assets["model"]),
            adapter=None,
            tasks=["tiny_colours"],
            include_path=str(assets["tasks"]),
            output_json=tmp_path / "never.json",
            apply_chat_template=True,
        )


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"tasks": "tiny_colours"}, "must be a list of task names"),
        ({"tasks": []}, "no evaluation tasks"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "fast"}, "batch_size"),
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"num_fewshot": -1}, "num_fewshot"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"device": "tpu"}, "device must be"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(options: dict, pattern: str, tmp_path: Path) -> None:
    kwargs = {
        "pretrained": str(tmp_path),
        "adapter": None,
        "tasks": ["tiny_colours"],
        "output_json": tmp_path / "never.json",
        **options,
    }
    with pytest.raises(EvaluationError, match=pattern):
        run_lm_eval(**kwargs)


# --------------------------------------------------------------------------- reading results


def test_read_task_metrics_strips_filter_and_stderr() -> None:
    results = {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "sample_len": 100,
                "acc,none": 0.5,
                "acc_stderr,none": 0.05,
                "acc_norm,none": 0.25,
                "acc_norm_stderr,none": "N/A",
            },
            "gsm": {"exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": 0.01},
        }
    }
    assert read_task_metrics(results) == {
        "arc_easy": {"acc": 0.5, "acc_norm": 0.25},
        "gsm": {"exact_match,strict-match": 0.125},
    }


def test_load_results_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(SelectMoeError, match=r"results file not found: .*missing\.json"):
        load_results(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"results": {', encoding="utf-8")
    with pytest.raises(SelectMoeError, match=r"invalid JSON in results file .*broken\.json"):
        load_results(broken)
    empty = tmp_path / "empty.json"
    empty.write_text('{"results": {}}', encoding="utf-8")
    with pytest.raises(SelectMoeError, match=r"empty\.json: no per-task 'results'"):
        load_results(empty)


def test_nan_metrics_become_null() -> None:
    from selectmoe.stages.evaluation import _jsonable

    converted = _jsonable({"a": math.nan, "b": (1, 2.0), "c": {"d": math.inf}})
    assert converted == {"a": None, "b": [1, 2.0], "c": {"d": None}}


# --------------------------------------------------------------------------- multi-process


def test_launched_evaluation_writes_the_in_process_results(
    assets: dict[str, Path], base_run: dict[str, object], tmp_path: Path, monkeypatch
) -> None:
    """`selectmoe evaluate` under accelerate launch (2 CPU processes): one file, same metrics."""
    from selectmoe.workflow.launch import run_evaluation_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "launched.json"
    evaluation = {
        "tasks": ["tiny_colours"],
        "include_path": str(assets["tasks"]),
        "num_fewshot": None,
        "batch_size": 8,
        "limit": None,
        "device": "cpu",
        "seed": 7,
    }
    returned = run_evaluation_stage(
        pretrained=str(assets["model"]),
        adapters=[None],
        output_jsons=[out],
        evaluation=evaluation,
        num_processes=2,
    )
    assert returned == [{}]  # written by the launched processes
    launched = _strict_json(out)
    expected = _strict_json(base_run["path"])
    launched_metrics, expected_metrics = read_task_metrics(launched), read_task_metrics(expected)
    assert launched_metrics.keys() == expected_metrics.keys() == {"tiny_colours"}
    assert launched_metrics["tiny_colours"] == pytest.approx(expected_metrics["tiny_colours"])
    assert launched["selectmoe"]["seed"] == 7 and launched["selectmoe"]["batch_size"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launched.json"]  # no stray temp file


def test_failed_launched_evaluation_is_one_error(assets: dict[str, Path], tmp_path: Path) -> None:
    from selectmoe.workflow.launch import run_evaluation_stage

    with pytest.raises(SelectMoeError, match=r"evaluate under accelerate launch \(2 processes\)"):
        run_evaluation_stage(
            pretrained=str(tmp_path / "missing-model"),
            adapters=[None],
            output_jsons=[tmp_path / "out.json"],
            evaluation={"tasks": ["tiny_colours"], "device": "cpu"},
            num_processes=2,
        )
    assert not (tmp_path / "out.json").exists()


def test_per_task_fewshot_counts(assets: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """A mapping sets the count of the tasks it names; the others keep their default (0 here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    common = {
        "pretrained": str(assets["model"]),
        "adapter": None,
        "include_path": str(assets["tasks"]),
        "batch_size": 8,
        "seed": 7,
        "limit": 4,
    }
    single = run_lm_eval(
        **common, tasks=["tiny_colours"], output_json=tmp_path / "one.json", num_fewshot=2
    )
    mapped = run_lm_eval(
        **common,
        tasks=["tiny_colours"],
        output_json=tmp_path / "map.json",
        num_fewshot={"tiny_colours": 2},
    )
    assert mapped["n-shot"] == single["n-shot"] == {"tiny_colours": 2}
    assert mapped["results"] == single["results"]
    default = run_lm_eval(
        **common, tasks=["tiny_colours"], output_json=tmp_path / "d.json", num_fewshot={}
    )
    assert default["n-shot"] == {"tiny_colours": 0}
    with pytest.raises(EvaluationError, match=r"num_fewshot names task\(s\) mmlu that are not"):
        run_lm_eval(
            **common,
            tasks=["tiny_colours"],
            output_json=tmp_path / "x.json",
            num_fewshot={"mmlu": 5},
        )
    with pytest.raises(EvaluationError, match=r"num_fewshot\['tiny_colours'\] must be an integer"):
        run_lm_eval(
            **common,
            tasks=["tiny_colours"],
            output_json=tmp_path / "x.json",
            num_fewshot={"tiny_colours": -1},
        )


def test_fewshot_option_parsing() -> None:
    import argparse

    from selectmoe.cli import _parse_fewshot

    assert _parse_fewshot("5") == 5
    assert _parse_fewshot("mmlu=5, bbh_cot_fewshot=3") == {"mmlu": 5, "bbh_cot_fewshot": 3}
    for bad in ("mmlu", "mmlu=x", "=3", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="task=count pairs"):
            _parse_fewshot(bad)


def test_evaluation_stage_passes_the_config_section(monkeypatch, tmp_path: Path) -> None:
    """In process, every key of the config's evaluation section reaches evaluate_adapters."""
    import selectmoe.stages.evaluation as evaluation_module
    from selectmoe.workflow.launch import run_evaluation_stage

    seen: dict = {}
    monkeypatch.setattr(
        evaluation_module, "evaluate_adapters", lambda **kwargs: seen.update(kwargs)
    )
    section = {
        "tasks": ["a", "b"],
        "include_path": "tasks/",
        "num_fewshot": {"a": 5},
        "batch_size": "auto",
        "limit": 0.5,
        "device": "cuda",
        "dtype": "bfloat16",
        "seed": 3,
    }
    run_evaluation_stage(
        pretrained="model",
        adapters=["a1", "a2"],
        output_jsons=[tmp_path / "r1.json", tmp_path / "r2.json"],
        samples_jsonls=[tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"],
        evaluation=section,
    )
    assert seen == {
        "pretrained": "model",
        "adapters": ["a1", "a2"],
        "output_jsons": [tmp_path / "r1.json", tmp_path / "r2.json"],
        "samples_jsonls": [tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"],
        **section,
    }


def test_a_tag_is_recorded_with_its_tasks_and_summarized_over_them(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    """A tag (lm-eval's ``tydiqa_goldp`` is one) has no entry in ``group_subtasks``: the
    evaluation records its tasks, and the summary pools their questions under the tag's name."""
    from selectmoe.evidence.summary import summarize

    task_dir = tmp_path / "tagged"
    task_dir.mkdir()
    source = (assets["tasks"] / "tiny_colours.yaml").read_text(encoding="utf-8")
    for name in ("tiny_colours_a", "tiny_colours_b"):
        text = source.replace("task: tiny_colours\n", f"task: {name}\ntag: tiny_tag\n")
        (task_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
    out, samples = tmp_path / "tag.json", tmp_path / "tag.jsonl"
    data = run_lm_eval(
        pretrained=str(assets["model"]),
        adapter=None,
        tasks=["tiny_tag"],
        include_path=task_dir,
        output_json=out,
        samples_jsonl=samples,
        limit=4.0,
    )
    assert data["selectmoe"]["task_members"] == {"tiny_tag": ["tiny_colours_a", "tiny_colours_b"]}
    assert "tiny_tag" not in (data.get("group_subtasks") or {})
    point = {"results": [out], "samples": [samples], "replicates": [None], "seeds": [None]}
    frame = summarize(
        [{**point, "target": "t", "method": "base"}],
        output_csv=tmp_path / "s.csv",
        output_md=tmp_path / "s.md",
    )
    accuracies = [data["results"][t]["acc,none"] for t in ("tiny_colours_a", "tiny_colours_b")]
    assert frame.iloc[0]["tiny_tag/acc"] == pytest.approx(sum(accuracies) / 2)  # 4 questions each


PAPER_METRICS = {
    "mmlu": "acc",
    "bbh_cot_fewshot": "exact_match,get-answer",
    "tydiqa_goldp": "f1",
    "hellaswag": "acc_norm",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
}


@pytest.mark.slow
def test_the_paper_tasks_as_lm_eval_defines_them_through_the_summary(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    """lm-eval's own definitions of the six paper tasks (mmlu and bbh_cot_fewshot groups,
    the tydiqa_goldp tag, filters, 5-shot mmlu), their datasets served offline in their real
    shape, evaluated and summarized with each task's metric: a group's score is lm-eval's own
    aggregate (weighted by size, as mmlu and bbh declare)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from selectmoe.data.offline_tasks import serve_offline
    from selectmoe.evidence.summary import SummarySettings, summarize

    # a tiny Llama long enough for bbh's 1,024 generated tokens after its few-shot prompts
    model_dir = tmp_path / "long_llama"
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out, samples = tmp_path / "paper.json", tmp_path / "paper.jsonl"
    with serve_offline():
        data = run_lm_eval(
            pretrained=str(model_dir),
            adapter=None,
            tasks=list(PAPER_METRICS),
            output_json=out,
            samples_jsonl=samples,
            num_fewshot={"mmlu": 5},
            limit=1.0,
        )
    members = data["selectmoe"]["task_members"]
    assert len(members["mmlu"]) == 57 and len(members["bbh_cot_fewshot"]) == 27
    assert sorted(members["tydiqa_goldp"]) == [f"tydiqa_goldp_{lang}" for lang in (
        "ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")]  # fmt: skip
    assert "tydiqa_goldp" not in data["group_subtasks"]  # a tag: lm-eval lists no members
    point = {"results": [out], "samples": [samples], "replicates": [None], "seeds": [None]}
    frame = summarize(
        [{**point, "target": "t", "method": "base"}],
        output_csv=tmp_path / "s.csv",
        output_md=tmp_path / "s.md",
        settings=SummarySettings(metric=PAPER_METRICS),
    )
    row = frame.iloc[0]
    for task, metric in PAPER_METRICS.items():
        assert f"{task}/{metric}" in frame.columns
    for group, metric in (("mmlu", "acc"), ("bbh_cot_fewshot", "exact_match,get-answer")):
        name, _, filter_name = metric.partition(",")
        reported = data["results"][group][f"{name},{filter_name or 'none'}"]
        assert row[f"{group}/{metric}"] == pytest.approx(reported, abs=1e-12)
    contracts = (tmp_path / "s.md").read_text(encoding="utf-8").split("Evaluation contract")[1]
    assert "mmlu: lm-eval" in contracts and "57 subtasks" in contracts
