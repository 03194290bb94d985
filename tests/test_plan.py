"""The memory and time plan: parameter counts, activation formulas, config overrides, CLI."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from selectmoe import SelectMoeConfig, SelectMoeForCausalLM
from selectmoe.cli import main
from selectmoe.errors import ConfigError, ModelError
from selectmoe.plan import (
    BUILTIN_SHAPES,
    GIB,
    HOUR,
    SCORING_CHUNK_TOKENS,
    Assumptions,
    ModelShape,
    less_gradients_plan,
    lora_saved_bytes_per_token,
    moe_warmup_saved_bytes_per_token,
    plan_table,
    represent_plan,
    shape_for_model,
    shape_from_config,
)

REPO = Path(__file__).resolve().parents[1]
OLMOE = "allenai/OLMoE-1B-7B-0125"
LLAMA = "meta-llama/Llama-2-7b-hf"
QWEN25 = "Qwen/Qwen2.5-1.5B"
QWEN3 = "Qwen/Qwen3-1.7B-Base"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TINY_IDS = {"eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 0}


@pytest.fixture
def paper() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))


def _row(rows: list[dict[str, Any]], stage: str, model: str = "") -> dict[str, Any]:
    found = [r for r in rows if r["stage"] == stage and model in r["model"]]
    assert len(found) == 1, (stage, model, [r["model"] for r in found])
    return found[0]


# ------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(
    ("source", "published_total", "published_active"),
    [
        (OLMOE, 6.9e9, 1.3e9),  # OLMoE paper / model card: 6.9B total, 1.3B active
        (LLAMA, 6.74e9, 6.74e9),  # Llama 2 paper: 6.74B (6,738,415,616)
        (QWEN25, 1.54e9, 1.54e9),  # model card: 1.54B
        (QWEN3, 1.7e9, 1.7e9),  # model card: 1.7B
    ],
)
def test_builtin_counts_match_published(
    source: str, published_total: float, published_active: float
) -> None:
    shape = BUILTIN_SHAPES[source]
    assert shape.total_params == pytest.approx(published_total, rel=0.02)
    assert shape.active_params_per_token == pytest.approx(published_active, rel=0.02)


def test_builtin_counts_exact() -> None:
    assert BUILTIN_SHAPES[OLMOE].total_params == 6_919_161_856
    assert BUILTIN_SHAPES[OLMOE].active_params_per_token == 1_282_017_280
    assert BUILTIN_SHAPES[LLAMA].total_params == 6_738_415_616
    assert BUILTIN_SHAPES[QWEN25].total_params == 1_543_714_304
    assert BUILTIN_SHAPES[QWEN3].total_params == 1_720_574_976
    # the model cards' non-embedding figures: Qwen2.5-1.5B 1.31B, Qwen3-1.7B 1.4B
    for source, non_embedding in ((QWEN25, 1.31e9), (QWEN3, 1.4e9)):
        shape = BUILTIN_SHAPES[source]
        assert shape.total_params - shape.embedding_params == pytest.approx(non_embedding, rel=0.01)


# the published config.json values, read through transformers' own config classes
_PUBLISHED_CONFIGS: dict[str, Callable[[], Any]] = {
    OLMOE: lambda: OlmoeConfig(
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        vocab_size=50304,
        tie_word_embeddings=False,
    ),
    LLAMA: lambda: LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    QWEN25: lambda: Qwen2Config(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    QWEN3: lambda: Qwen3Config(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


@pytest.mark.parametrize("source", list(_PUBLISHED_CONFIGS))
def test_builtin_shapes_equal_their_config(source: str) -> None:
    read = shape_from_config(_PUBLISHED_CONFIGS[source]().to_dict(), name=source)
    assert read.total_params == BUILTIN_SHAPES[source].total_params
    assert read.active_params_per_token == BUILTIN_SHAPES[source].active_params_per_token


_TINY_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "olmoe": lambda: OlmoeForCausalLM(
        OlmoeConfig(
            hidden_size=48,
            intermediate_size=20,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=6,
            num_experts_per_tok=2,
            vocab_size=97,
            **TINY_IDS,
        )
    ),
    "olmoe-bias": lambda: OlmoeForCausalLM(
        OlmoeConfig(
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_experts=4,
            num_experts_per_tok=1,
            vocab_size=50,
            attention_bias=True,
            **TINY_IDS,
        )
    ),
    "select_moe": lambda: SelectMoeForCausalLM(
        SelectMoeConfig(
            hidden_size=48,
            intermediate_size=20,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts=6,
            num_experts_per_tok=3,
            vocab_size=97,
            **TINY_IDS,
        )
    ),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=48,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            vocab_size=101,
        )
    ),
    "llama-bias-tied": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=64,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        )
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=48,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            vocab_size=101,
            tie_word_embeddings=True,
        )
    ),
    "qwen2-untied": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=64,
            tie_word_embeddings=False,
        )
    ),
    "qwen3": lambda: Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=101,
            tie_word_embeddings=True,
        )
    ),
}


@pytest.mark.parametrize("kind", list(_TINY_MODELS))
def test_shape_from_config_counts_the_real_module_exactly(kind: str) -> None:
    model = _TINY_MODELS[kind]()
    shape = shape_from_config(model.config.to_dict())
    assert shape.total_params == sum(p.numel() for p in model.parameters())


def test_shape_for_model_reads_a_local_directory(tmp_path: Path) -> None:
    model = _TINY_MODELS["qwen3"]()
    (tmp_path / "config.json").write_text(model.config.to_json_string(), encoding="utf-8")
    shape = shape_for_model(str(tmp_path))
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.name == str(tmp_path)
    with pytest.raises(ModelError, match="no built-in shape"):
        shape_for_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="model_type 'gpt2' is not supported"):
        shape_from_config({"model_type": "gpt2"})


def test_lora_params_equal_peft() -> None:
    from peft import LoraConfig, get_peft_model

    model = _TINY_MODELS["qwen2"]()
    shape = shape_from_config(model.config.to_dict())
    modules = ["q_proj", "v_proj", "o_proj", "down_proj"]
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=modules))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert shape.lora_params(4, modules) == trainable
    with pytest.raises(ConfigError, match="not projections"):
        shape.lora_params(4, ["qkv"])


# --------------------------------------------------------------------------- activation formulas


def _saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: bool) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(**batch)
    return sum(seen.values())


BATCH, LENGTH = 2, 64


def _batch(vocab: int, *, padded: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, LENGTH // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _warmup_model(layers: int, kv_heads: int) -> SelectMoeForCausalLM:
    torch.manual_seed(0)
    config = SelectMoeConfig(
        hidden_size=64,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        num_experts=8,
        num_experts_per_tok=3,
        vocab_size=96,
        **TINY_IDS,
    )
    model = SelectMoeForCausalLM(config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith(("quality_gate.weight", "mlp.gate.weight")))
    return model


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_warmup_activation_formula_matches_autograd(kv_heads: int, padded: bool) -> None:
    """One more layer adds what the formula says, within 2% (float32, routers trained)."""
    batch = _batch(96, padded=padded)
    batch["labels"] = batch["input_ids"]
    measured = [
        _saved_bytes(_warmup_model(layers, kv_heads), batch, autocast=False) for layers in (2, 3)
    ]
    per_layer = (measured[1] - measured[0]) / (BATCH * LENGTH)
    shape = shape_from_config(_warmup_model(3, kv_heads).config.to_dict())
    predicted = moe_warmup_saved_bytes_per_token(shape, mask_length=LENGTH if padded else 0)
    assert predicted == pytest.approx(per_layer, rel=0.02)


_DENSE = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
}


def _lora_model(kind: str, layers: int, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config_class, model_class, extra = _DENSE[kind]
    torch.manual_seed(0)
    config = config_class(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        **extra,
    )
    # as selectmoe.stages.finetune does with bf16: a bf16 base, float32 adapters, bf16 autocast
    model = model_class(config).to(torch.bfloat16)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)
    model.train()
    return model


@pytest.mark.parametrize("kind", list(_DENSE))
@pytest.mark.parametrize("padded", [False, True])
def test_finetune_activation_formula_matches_autograd(kind: str, padded: bool) -> None:
    """One more layer adds the formula's bytes (plus its adapters' bf16 copies), within 2%."""
    rank = 8
    batch = _batch(96, padded=padded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = [
            _saved_bytes(_lora_model(kind, layers, rank), batch, autocast=True) for layers in (2, 3)
        ]
    shape = shape_from_config(_lora_model(kind, 1, rank).base_model.model.config.to_dict())
    predicted = lora_saved_bytes_per_token(
        shape,
        rank=rank,
        modules=LORA_TARGETS,
        dropout=False,
        autocast_bf16=True,
        mask_length=LENGTH if padded else 0,
    )
    adapter_copies = 2 * shape.lora_params(rank, LORA_TARGETS) / shape.num_layers
    per_layer = (measured[1] - measured[0] - adapter_copies) / (BATCH * LENGTH)
    assert predicted == pytest.approx(per_layer, rel=0.02)


# ----------------------------------------------------------------------------------- the table


def test_paper_plan_has_one_row_per_stage_and_model(paper: dict[str, Any]) -> None:
    rows = plan_table(paper)
    stages = [(r["stage"], r["model"]) for r in rows]
    assert [s for s, _ in stages] == [
        "warmup",
        "score",
        "represent",
        "less_warmup",
        "less_gradients",
        "select",
    ] + ["finetune"] * 3 + ["evaluate"] * 3
    assert {m for s, m in stages if s == "finetune"} == {LLAMA, QWEN25, QWEN3}
    warmup, score = _row(rows, "warmup"), _row(rows, "score")
    # per loss type and selection replicate (3)
    assert warmup["jobs"] == 4 * 3 and score["jobs"] == 16 * 3
    # 6 router methods x 4 losses x 3 percentages + {random, rds, less} x 3 + full = 82 rows
    assert _row(rows, "finetune", LLAMA)["jobs"] == 246  # 82 rows x 3 replicates x 1 seed
    assert _row(rows, "evaluate", LLAMA)["jobs"] == 83  # one per row, and the base model
    # one k-means sweep per loss type and replicate serves selectmoe, selectmoe_seed, diversity
    assert _row(rows, "select")["jobs"] == 4 * 3 and _row(rows, "select")["device"] == "cpu"
    # the warmup holds the float32 OLMoE (6.92e9 x 4 bytes) and fits one 80 GiB GPU
    assert warmup["memory_gib"]["weights"] == pytest.approx(6_919_194_624 * 4 / GIB, abs=0.01)
    assert warmup["fits"] is True
    # the paper config scores in float32 (benchmarks/RESULTS.md, scoring precision)
    assert score["memory_gib"]["weights"] == pytest.approx(warmup["memory_gib"]["weights"])
    finetune = _row(rows, "finetune", LLAMA)
    assert finetune["memory_gib"]["weights"] == pytest.approx(6_738_415_616 * 2 / GIB, abs=0.01)
    # 4 epochs over the whole pool take 1 / 0.05 = 20 times the 5% selection
    times = finetune["time_per_job_h"]
    assert times["full"] == pytest.approx(20 * times["5%"], rel=0.01)


def _gib(rows: list[dict[str, Any]], stage: str, model: str = "") -> float:
    return _row(rows, stage, model)["gpu_memory_gib"]


def test_memory_grows_with_batch_and_length(paper: dict[str, Any]) -> None:
    base = plan_table(paper)
    for section, key in [
        ("warmup", "per_device_batch_size"),
        ("warmup", "max_sequence_length"),
        ("scoring", "batch_size"),
        ("scoring", "max_sequence_length"),
        ("finetune", "per_device_batch_size"),
        ("finetune", "max_sequence_length"),
    ]:
        bigger = copy.deepcopy(paper)
        bigger[section][key] *= 2
        rows = plan_table(bigger)
        stage = {"warmup": "warmup", "scoring": "score", "finetune": "finetune"}[section]
        model = LLAMA if stage == "finetune" else ""
        assert _gib(rows, stage, model) > _gib(base, stage, model), (section, key)
        before = _row(base, stage, model)["memory_gib"]["activations"]
        after = _row(rows, stage, model)["memory_gib"]["activations"]
        # linear in tokens, plus the padding mask's T x T copies (a few percent)
        assert 1.99 * before <= after <= 2.2 * before, (section, key)


def test_lora_r_override_changes_the_finetune_rows(paper: dict[str, Any]) -> None:
    base = plan_table(paper)
    bigger = copy.deepcopy(paper)
    bigger["finetune"]["lora_r"] = 256
    rows = plan_table(bigger)
    for model in (LLAMA, QWEN25, QWEN3):
        before, after = _row(base, "finetune", model), _row(rows, "finetune", model)
        assert after["memory_gib"]["trainable"] == pytest.approx(
            2 * before["memory_gib"]["trainable"], rel=0.01
        )
        assert after["gpu_memory_gib"] > before["gpu_memory_gib"]
        assert after["time_per_job_h"]["full"] > before["time_per_job_h"]["full"]
        assert "r=256" in after["notes"][0]
    assert _row(rows, "warmup") == _row(base, "warmup")
    # a per-target override changes that target only
    one = copy.deepcopy(paper)
    one["targets"]["qwen2.5-1.5b"]["finetune"] = {"lora_r": 8}
    rows = plan_table(one)
    assert _row(rows, "finetune", QWEN25) != _row(base, "finetune", QWEN25)
    assert _row(rows, "finetune", LLAMA) == _row(base, "finetune", LLAMA)


def test_gradient_checkpointing_trades_memory_for_time(paper: dict[str, Any]) -> None:
    base = plan_table(paper)
    paper["finetune"]["gradient_checkpointing"] = True
    rows = plan_table(paper)
    before, after = _row(base, "finetune", LLAMA), _row(rows, "finetune", LLAMA)
    assert after["memory_gib"]["activations"] < before["memory_gib"]["activations"] / 5
    # one more forward: (3 x 2N) / (2 x 2N) = 1.5 times the matmul work
    assert after["time_per_job_h"]["full"] == pytest.approx(
        1.5 * before["time_per_job_h"]["full"], rel=0.01
    )


def test_lm_statistics_and_ifd_add_the_head_and_the_answers_pass(paper: dict[str, Any]) -> None:
    from selectmoe.stages.scoring import LM_HEAD_CHUNK_TOKENS

    assert LM_HEAD_CHUNK_TOKENS == SCORING_CHUNK_TOKENS
    shape = BUILTIN_SHAPES["allenai/OLMoE-1B-7B-0125"]
    full = _row(plan_table(paper), "score")  # the paper sweep has ifd
    assert full["memory_gib"]["logits"] == pytest.approx(
        2 * 4 * SCORING_CHUNK_TOKENS * shape.vocab_size / GIB, abs=0.005
    )
    paper["selection"]["methods"] = ["selectmoe", "random"]
    no_ifd = _row(plan_table(paper), "score")
    paper["scoring"]["lm_statistics"] = False
    paper["selection"]["methods"] = ["selectmoe_seed", "random"]
    stack = _row(plan_table(paper), "score")
    assert "logits" not in stack["memory_gib"]
    n_matmul = shape.matmul_params_per_token(lm_head=False)
    head = shape.hidden_size * shape.vocab_size
    share = Assumptions().answer_token_share
    for dataset, hours in stack["time_per_job_h"].items():
        # time is proportional to the FLOPs per token: stack; + head on answers; + answers again
        assert no_ifd["time_per_job_h"][dataset] == pytest.approx(
            hours * (n_matmul + head * share) / n_matmul, rel=0.02
        )
        assert full["time_per_job_h"][dataset] == pytest.approx(
            hours * (n_matmul + head * share + (n_matmul + head) * share) / n_matmul, rel=0.02
        )


def test_gpu_memory_and_mfu(paper: dict[str, Any]) -> None:
    base = plan_table(paper)
    small = plan_table(paper, gpu_memory_gib=40)
    assert _row(small, "warmup")["fits"] is False
    assert _row(small, "score")["fits"] is True
    # lm-eval's automatic batch halves until the batch fits
    assert _row(small, "evaluate", LLAMA)["gpu_memory_gib"] <= 40
    batch = [int(_row(r, "evaluate", LLAMA)["notes"][0].split()[3]) for r in (base, small)]
    assert batch[1] < batch[0] <= 64
    slow = plan_table(paper, mfu=0.2)
    assert _row(slow, "warmup")["time_per_job_h"][""] == pytest.approx(
        2 * _row(base, "warmup")["time_per_job_h"][""], rel=0.01
    )


def test_padding_factor() -> None:
    assumptions = Assumptions()
    assert assumptions.padding_factor(1) == 1.0
    factors = [assumptions.padding_factor(n) for n in (2, 4, 8, 16)]
    assert factors == sorted(factors) and 1.0 < factors[1] < 2.0
    assert Assumptions(length_sigma=0.0).padding_factor(4) == 1.0


def test_settings_defaults_are_the_schema_s() -> None:
    """Every settings dataclass takes each default the schema has from the schema (its one home):
    no field of a config key keeps a default of its own."""
    import dataclasses

    from selectmoe.evidence.summary import SummarySettings
    from selectmoe.schema import section_defaults
    from selectmoe.stages.finetune import FinetuneSettings
    from selectmoe.stages.less import LessSettings
    from selectmoe.stages.representations import RepresentationSettings
    from selectmoe.stages.warmup import WarmupSettings

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    for cls, section in [
        (WarmupSettings, "warmup"),
        (FinetuneSettings, "finetune"),
        (LessSettings, "targeted.less"),
        (RepresentationSettings, "targeted.rds"),
        (SummarySettings, "summary"),
    ]:
        node = schema
        for part in section.split("."):
            node = node["properties"][part]
        defaults = section_defaults(section)
        settings = cls()
        for item in dataclasses.fields(cls):
            if item.name in node["properties"]:
                assert item.name in defaults, (section, item.name)  # the schema has it
                assert getattr(settings, item.name) == defaults[item.name], (section, item.name)


def test_bad_inputs_are_one_line_errors(paper: dict[str, Any]) -> None:
    bad = copy.deepcopy(paper)
    bad["data"]["datasets"] = ["cot", "alpaca"]
    with pytest.raises(ConfigError, match=r"\['alpaca'\]: pool size unknown"):
        plan_table(bad)
    with pytest.raises(ConfigError, match=r"mfu is 1\.5"):
        plan_table(paper, mfu=1.5)
    bad = copy.deepcopy(paper)
    bad["targets"]["llama2-7b"]["model"] = OLMOE
    with pytest.raises(ModelError, match="dense targets only"):
        plan_table(bad)
    bad = copy.deepcopy(paper)
    del bad["selection"]["loss_types"]
    with pytest.raises(ConfigError, match=r"selection\.loss_types: missing \(required\)"):
        plan_table(bad)
    with pytest.raises(ConfigError, match="qk_norm"):
        ModelShape("x", 8, 1, 2, 2, 8, 10, False, qk_norm="rms")


# ------------------------------------------------------------------------------- command line


def test_cli_prints_the_markdown_table(capsys: pytest.CaptureFixture) -> None:
    status = main(["plan", "--configfile", str(REPO / "config" / "paper.yaml")])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| stage | model | jobs |") and "fits 80 GiB" in lines[0]
    assert lines[1].startswith("| --- |")
    body = [line.split(" | ")[:2] for line in lines[2:]]
    assert [stage.strip("| ") for stage, _ in body] == (
        ["warmup", "score", "represent", "less_warmup", "less_gradients", "select"]
        + ["finetune"] * 3
        + ["evaluate"] * 3
    )
    models = {model for stage, model in body if stage.strip("| ") in ("finetune", "evaluate")}
    assert models == {LLAMA, QWEN25, QWEN3}


def test_cli_json_and_options(capsys: pytest.CaptureFixture) -> None:
    config = str(REPO / "config" / "paper.yaml")
    argv = ["plan", "--configfile", config, "--format", "json", "--gpu-memory-gib", "40"]
    assert main([*argv, "--mfu", "0.2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12  # 9 and the targeted methods' represent, less_warmup, less_gradients
    assert rows[0]["gpu_memory_limit_gib"] == 40 and rows[0]["fits"] is False
    assert rows[0]["assumptions"]["mfu"] == 0.2


def test_cli_bad_config_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.yaml"
    status = main(["plan", "--configfile", str(missing)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines == [
        f"selectmoe: error: {missing}: config file not found; pass e.g. config/paper.yaml"
    ]


def test_fsdp_finetune_memory_is_per_gpu(paper: dict[str, Any]) -> None:
    """With finetune.sharding fsdp over 4 GPUs each holds a quarter of the weights and adapters,
    plus two decoder layers gathered whole; activations stay per GPU."""
    import copy

    replicated = _row(plan_table(paper), "finetune", LLAMA)
    sharded_config = copy.deepcopy(paper)
    sharded_config["finetune"]["sharding"] = "fsdp"
    sharded_config["resources"]["gpus"]["finetune"] = 4
    sharded = _row(plan_table(sharded_config), "finetune", LLAMA)
    assert sharded["memory_gib"]["weights"] == pytest.approx(
        replicated["memory_gib"]["weights"] / 4, abs=0.01
    )
    assert sharded["memory_gib"]["trainable"] == pytest.approx(
        replicated["memory_gib"]["trainable"] / 4, abs=0.01
    )
    assert sharded["memory_gib"]["activations"] == replicated["memory_gib"]["activations"]
    # Llama-2-7B: 32 layers of 202 M parameters, two of them in bf16
    assert sharded["memory_gib"]["gathered layers"] == pytest.approx(
        2 * 2 * 202.4e6 / GIB, rel=0.01
    )
    assert "gathered layers" not in replicated["memory_gib"]


# ---------------------------------------------------------------------------- targeted methods

TARGETED = ["rds", "less"]
TARGETED_STAGES = ["represent", "less_warmup", "less_gradients"]


@pytest.fixture
def targeted(paper: dict[str, Any]) -> dict[str, Any]:
    """The paper config with the targeted methods rds and less in the sweep, at the schema's
    (the authors') targeted settings."""
    methods = paper["selection"]["methods"]
    paper["selection"]["methods"] = methods + [m for m in TARGETED if m not in methods]
    paper.pop("targeted", None)
    return paper


def test_targeted_rows_and_jobs(targeted: dict[str, Any]) -> None:
    rows = plan_table(targeted)
    stages = [r["stage"] for r in rows]
    assert (
        stages
        == ["warmup", "score", *TARGETED_STAGES, "select"] + ["finetune"] * 3 + ["evaluate"] * 3
    )
    # the targeted model is the first target's
    assert {_row(rows, stage)["model"] for stage in TARGETED_STAGES} == {LLAMA}
    # one job per pool dataset (4) and one for the query set
    # (rds has no chance: once; LESS once per selection replicate)
    assert _row(rows, "represent")["jobs"] == 5
    assert _row(rows, "less_warmup")["jobs"] == 3
    assert _row(rows, "less_gradients")["jobs"] == 5 * 3
    assert set(_row(rows, "less_gradients")["time_per_job_h"]) == {
        "cot",
        "dolly",
        "flan_v2",
        "oasst1",
        "queries",
    }
    # rds and less select once per percentage, like random: 76 + 2 x 3 selections
    assert _row(rows, "finetune", LLAMA)["jobs"] == 82 * 3
    assert _row(rows, "evaluate", LLAMA)["jobs"] == 83
    notes = _row(rows, "less_gradients")["notes"]
    assert "one job per dataset and one for the queries" in notes
    assert any("4 checkpoints" in n for n in notes)
    assert any("8,192 dimensions" in n and "134,217,728 parameters" in n for n in notes)
    for row in rows:
        if row["stage"] in TARGETED_STAGES:
            assert row["total_gpu_hours"] > 0 and row["device"] == "gpu"


def test_no_targeted_rows_without_the_methods(paper: dict[str, Any]) -> None:
    paper["selection"]["methods"] = [m for m in paper["selection"]["methods"] if m not in TARGETED]
    assert not {r["stage"] for r in plan_table(paper)} & set(TARGETED_STAGES)
    rds_only = copy.deepcopy(paper)
    rds_only["selection"]["methods"].append("rds")
    assert [r["stage"] for r in plan_table(rds_only) if r["stage"] in TARGETED_STAGES] == [
        "represent"
    ]
    paper["selection"]["methods"].append("less")
    assert [r["stage"] for r in plan_table(paper) if r["stage"] in TARGETED_STAGES] == [
        "less_warmup",
        "less_gradients",
    ]


def test_represent_memory_and_time(targeted: dict[str, Any]) -> None:
    rows = plan_table(targeted)
    represent, finetune = _row(rows, "represent"), _row(rows, "finetune", LLAMA)
    # float32 weights (the paper's rds dtype) are twice finetuning's bf16 base; no logits
    assert represent["memory_gib"]["weights"] == pytest.approx(
        2 * finetune["memory_gib"]["weights"], abs=0.01
    )
    assert "logits" not in represent["memory_gib"]
    assert represent["precision"] == "float32"
    # in bfloat16 one inference batch takes less than a LoRA training step
    targeted["targeted"] = {"rds": {"dtype": "bfloat16"}}
    bf16 = _row(plan_table(targeted), "represent")
    assert bf16["gpu_memory_gib"] < finetune["gpu_memory_gib"] < represent["gpu_memory_gib"]
    # time: 2 x the body's matmul parameters per token, linear in the pool
    del targeted["targeted"]
    shape = BUILTIN_SHAPES[LLAMA]
    base = represent_plan(targeted, shape, Assumptions())
    doubled = Assumptions(pool_sizes={k: 2 * v for k, v in Assumptions().pool_sizes.items()})
    twice = represent_plan(targeted, shape, doubled)
    for dataset in targeted["data"]["datasets"]:
        assert twice.time_s[dataset] == pytest.approx(2 * base.time_s[dataset], rel=1e-3)
    assert twice.time_s["queries"] == base.time_s["queries"]
    queries = base.time_s["queries"] / HOUR
    assert twice.total_gpu_hours - queries == pytest.approx(
        2 * (base.total_gpu_hours - queries), rel=1e-3
    )
    assumptions = Assumptions()
    flops = 2 * shape.matmul_params_per_token(lm_head=False) * 100_000 * 350
    assert base.time_s["cot"] == pytest.approx(assumptions.seconds(flops, "float32"), rel=1e-9)


def test_less_warmup_shares_finetune_s_model(targeted: dict[str, Any]) -> None:
    """The paper's targeted.less equals its finetune section: same memory per job, and 4 epochs
    on 5% of the pool take the time of the 5% selection's finetuning."""
    rows = plan_table(targeted)
    warmup, finetune = _row(rows, "less_warmup"), _row(rows, "finetune", LLAMA)
    assert warmup["memory_gib"] == finetune["memory_gib"]
    assert warmup["time_per_job_h"][""] == pytest.approx(finetune["time_per_job_h"]["5%"], rel=0.01)
    targeted["targeted"] = {"less": {"warmup_share": 0.1, "lora_r": 256}}
    changed = _row(plan_table(targeted), "less_warmup")
    assert changed["time_per_job_h"][""] > 2 * warmup["time_per_job_h"][""]
    assert changed["memory_gib"]["trainable"] == pytest.approx(
        2 * warmup["memory_gib"]["trainable"], rel=0.01
    )


def test_less_gradients_time_is_proportional_to_epochs(targeted: dict[str, Any]) -> None:
    four = _row(plan_table(targeted), "less_gradients")
    targeted["targeted"] = {"less": {"epochs": 2}}
    two = _row(plan_table(targeted), "less_gradients")
    assert four["total_gpu_hours"] == pytest.approx(2 * two["total_gpu_hours"], rel=0.01)
    assert two["memory_gib"] == four["memory_gib"]
    assert any("2 checkpoints" in n for n in two["notes"])


def test_less_gradients_memory_counts_gradients_and_projection(targeted: dict[str, Any]) -> None:
    shape, assumptions = BUILTIN_SHAPES[LLAMA], Assumptions()
    base = less_gradients_plan(targeted, shape, assumptions)
    lora = shape.lora_params(128, LORA_TARGETS)
    # batch_size float32 gradient vectors, four times: vmap's, their concatenation, and the two
    # temporaries of the Adam-normalised direction
    assert base.memory["gradients"] == 4 * 8 * 4 * lora
    assert base.memory["projection"] == 65536 * 8192 * 4
    targeted["targeted"] = {"less": {"projection_dim": 16384}}
    wide = less_gradients_plan(targeted, shape, assumptions)
    assert wide.memory["projection"] - base.memory["projection"] == 65536 * 8192 * 4
    assert wide.memory_bytes - base.memory_bytes == pytest.approx(
        65536 * 8192 * 4 * (1 + assumptions.fragmentation)
    )
    # the projection's 2 P d FLOPs per example, in float32, grow with d
    for label, seconds in base.time_s.items():
        assert wide.time_s[label] > seconds
    # a larger per-example-gradient batch holds more gradients and activations
    targeted["targeted"] = {"less": {"batch_size": 16}}
    bigger = less_gradients_plan(targeted, shape, assumptions)
    assert bigger.memory["gradients"] == 2 * base.memory["gradients"]
    assert bigger.memory["activations"] == pytest.approx(2 * base.memory["activations"])


def test_targeted_model_override(targeted: dict[str, Any]) -> None:
    targeted["targeted"] = {"model": QWEN25}
    rows = plan_table(targeted)
    assert {_row(rows, stage)["model"] for stage in TARGETED_STAGES} == {QWEN25}
    targeted["targeted"] = {"model": OLMOE}
    with pytest.raises(ModelError, match="dense targets only"):
        plan_table(targeted)
    targeted["targeted"] = {"rds": {"dtype": "int8"}}
    with pytest.raises(ConfigError, match=r"targeted\.rds\.dtype"):
        plan_table(targeted)


def test_cli_prints_the_targeted_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))
    methods = config["selection"]["methods"]
    config["selection"]["methods"] = [*methods, *(m for m in TARGETED if m not in methods)]
    path = tmp_path / "targeted.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["plan", "--configfile", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[2:]
    stages = [line.split(" | ")[0].strip("| ") for line in lines]
    assert stages[2:6] == [*TARGETED_STAGES, "select"]


def test_every_replicate_is_counted(paper: dict[str, Any]) -> None:
    """A selection replicate repeats the warmups, the scoring, LESS and the finetunes: the
    GPU-hours of those rows grow with the number of replicates, the shared ones do not."""
    three = {row["stage"] + row["model"]: row for row in plan_table(paper)}
    paper["selection"]["replicates"] = [42]
    one = {row["stage"] + row["model"]: row for row in plan_table(paper)}
    for key, row in three.items():
        if not row["total_gpu_hours"]:
            continue
        ratio = row["total_gpu_hours"] / one[key]["total_gpu_hours"]
        expected = 1.0 if row["stage"] == "represent" else 3.0
        assert ratio == pytest.approx(expected, rel=0.02), key
        assert row["jobs"] == expected * one[key]["jobs"] or row["stage"] == "evaluate", key
