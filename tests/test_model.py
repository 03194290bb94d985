"""The Select-MoE model: gate init, router outputs, trash expert, loss parts, save/load."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from selectmoe.errors import ConfigError
from selectmoe.model import modeling_select_moe
from selectmoe.model.losses import causal_lm_loss, quality_loss

INPUT_IDS = torch.tensor([[5, 17, 42, 99, 7, 250], [8, 120, 33, 64, 2, 2]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
LABELS = torch.where(MASK.bool(), INPUT_IDS, torch.full_like(INPUT_IDS, -100))


@pytest.fixture
def no_custom_trash() -> Iterator[None]:
    """Restore the registered custom trash expert afterwards (it is module-global)."""
    saved = list(modeling_select_moe._CUSTOM_TRASH_EXPERT)
    modeling_select_moe._CUSTOM_TRASH_EXPERT.clear()
    yield
    modeling_select_moe._CUSTOM_TRASH_EXPERT[:] = saved


@pytest.fixture(scope="module")
def converted_constant_gate(tmp_path_factory: pytest.TempPathFactory, tiny_olmoe_dir: Path) -> Path:
    """The tiny OLMoE converted with gates drawn from N(0.7, 0)."""
    from selectmoe.model.conversion import convert_olmoe

    directory = tmp_path_factory.mktemp("constant_gate") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        convert_olmoe(
            os.fspath(tiny_olmoe_dir),
            directory,
            quality_gate_init_mean=0.7,
            quality_gate_init_std=0.0,
        )
    return directory


def _gates(model) -> list[torch.Tensor]:
    return [layer.quality_gate.weight.detach() for layer in model.model.layers]


# ----------------------------------------------------------------------------------------------
# gate init


def test_gate_init_is_exact_after_construction(tiny_select_moe) -> None:
    model = tiny_select_moe(quality_gate_init_mean=0.7, quality_gate_init_std=0.0)
    for gate in _gates(model):
        assert gate.shape == (1, 32)
        assert torch.equal(gate, torch.full((1, 32), 0.7))
    # the framework's init still ran for the other weights
    router = model.model.layers[0].mlp.gate.weight
    assert router.std() > 0 and not torch.all(router == 0.7)


def test_gate_init_distribution_is_the_configured_one(tiny_select_moe) -> None:
    # initializer_range 0.5 (the framework's init) vs a gate std of 0.05: easy to tell apart
    model = tiny_select_moe(
        hidden_size=256,
        num_hidden_layers=4,
        initializer_range=0.5,
        quality_gate_init_mean=-0.3,
        quality_gate_init_std=0.05,
    )
    values = torch.cat([g.flatten() for g in _gates(model)])  # 1024 draws
    assert values.mean().item() == pytest.approx(-0.3, abs=0.01)
    assert values.std().item() == pytest.approx(0.05, rel=0.1)
    assert model.model.layers[0].mlp.gate.weight.std().item() == pytest.approx(0.5, rel=0.1)


def test_gate_init_survives_from_pretrained(converted_constant_gate: Path) -> None:
    from transformers import AutoModelForCausalLM

    from selectmoe import SelectMoeForCausalLM, register_select_moe

    register_select_moe()
    for loader in (SelectMoeForCausalLM, AutoModelForCausalLM):
        model = loader.from_pretrained(converted_constant_gate)
        assert isinstance(model, SelectMoeForCausalLM)
        assert model.config.quality_gate_init_mean == 0.7
        assert model.config.quality_gate_init_std == 0.0
        for gate in _gates(model):
            assert torch.equal(gate, torch.full((1, 32), 0.7))


def test_loaded_gates_are_the_saved_ones(tiny_converted_dir: Path) -> None:
    from safetensors.torch import load_file

    from selectmoe import SelectMoeForCausalLM

    saved = load_file(tiny_converted_dir / "model.safetensors")
    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir)
    for index, gate in enumerate(_gates(model)):
        assert torch.equal(gate, saved[f"model.layers.{index}.quality_gate.weight"])
    # the default init: N(0, 0.02)
    values = torch.cat([g.flatten() for g in _gates(model)])
    assert 0.005 < values.std().item() < 0.05


# ----------------------------------------------------------------------------------------------
# router output


def test_router_output_shapes_and_inputs(tiny_select_moe) -> None:
    model = tiny_select_moe(quality_gate_init_std=0.3).eval()
    captured: list[torch.Tensor] = []
    hooks = [
        layer.post_attention_layernorm.register_forward_hook(
            lambda module, args, output: captured.append(output.detach())
        )
        for layer in model.model.layers
    ]
    with torch.no_grad():
        output = model(input_ids=INPUT_IDS, attention_mask=MASK, output_router_logits=True)
    for hook in hooks:
        hook.remove()
    assert output.logits.shape == (2, 6, model.config.vocab_size)
    assert len(output.router_logits) == 2
    for layer, router, h in zip(model.model.layers, output.router_logits, captured, strict=True):
        assert set(router) == {"quality_score", "moe_logits"}
        assert router["quality_score"].shape == (2, 6, 1)
        assert router["moe_logits"].shape == (2 * 6, 8)
        # both read the post-attention-layernorm output h
        expected_score = h @ layer.quality_gate.weight.detach().T
        torch.testing.assert_close(router["quality_score"], expected_score)
        expected_logits = h.reshape(-1, 32) @ layer.mlp.gate.weight.detach().T
        torch.testing.assert_close(router["moe_logits"], expected_logits)
    with torch.no_grad():
        plain = model(input_ids=INPUT_IDS, attention_mask=MASK)
    assert plain.router_logits is None and plain.loss is None and plain.aux_loss is None
    torch.testing.assert_close(plain.logits, output.logits, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# trash expert


def _logits(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS, attention_mask=MASK, **kwargs).logits


def test_trash_expert_mode_is_read_at_forward_time(
    tiny_converted_dir: Path, no_custom_trash: None
) -> None:
    from selectmoe import SelectMoeForCausalLM, register_trash_expert

    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).eval()
    assert model.config.trash_expert_mode == "zero"
    zero = _logits(model)
    assert torch.equal(_logits(model), zero)  # deterministic

    model.config.trash_expert_mode = "noise"
    torch.manual_seed(1)
    noise_a = _logits(model)
    torch.manual_seed(2)
    noise_b = _logits(model)
    torch.manual_seed(1)
    assert torch.equal(_logits(model), noise_a)  # the noise comes from torch's generator
    assert (noise_a - zero).abs().max() > 1e-4
    assert (noise_a - noise_b).abs().max() > 1e-4

    calls: list[tuple[int, ...]] = []

    @register_trash_expert
    def _zeros(hidden_states: torch.Tensor, config) -> torch.Tensor:
        calls.append(tuple(hidden_states.shape))
        return torch.zeros_like(hidden_states)

    model.config.trash_expert_mode = "custom"
    assert torch.equal(_logits(model), zero)  # a custom all-zero trash expert is "zero"
    assert calls == [(2, 6, 32)] * model.config.num_hidden_layers

    register_trash_expert(lambda hidden_states, config: hidden_states * 3.0)
    assert (_logits(model) - zero).abs().max() > 1e-4
    model.config.trash_expert_mode = "zero"
    assert torch.equal(_logits(model), zero)


def test_noise_trash_expert_statistics_and_no_gradient() -> None:
    from types import SimpleNamespace

    from selectmoe.model.modeling_select_moe import trash_expert

    torch.manual_seed(0)
    scale = torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1)
    shift = torch.tensor([-1.0, 0.0, 3.0]).view(1, 3, 1)
    hidden = (torch.randn(2, 3, 4096) * scale + shift).requires_grad_()
    noise = trash_expert(hidden, SimpleNamespace(trash_expert_mode="noise"))
    assert noise.shape == hidden.shape
    assert not noise.requires_grad
    # per token: the mean and std of that token's hidden state, but not the hidden state itself
    torch.testing.assert_close(noise.mean(-1), hidden.detach().mean(-1), rtol=0, atol=0.15)
    torch.testing.assert_close(
        noise.std(-1) / hidden.detach().std(-1), torch.ones(2, 3), rtol=0, atol=0.05
    )
    centred = torch.stack(
        [
            (noise - noise.mean(-1, keepdim=True)).flatten(),
            (hidden - hidden.mean(-1, keepdim=True)).detach().flatten(),
        ]
    )
    assert torch.corrcoef(centred)[0, 1].abs() < 0.05  # independent of the hidden state
    zero = trash_expert(hidden, SimpleNamespace(trash_expert_mode="zero"))
    assert torch.equal(zero, torch.zeros_like(hidden))


def test_mix_is_good_moe_plus_bad_trash(tiny_select_moe, no_custom_trash: None) -> None:
    """Layer 0's output moves by exactly (1 - good) * c when the trash expert returns c."""
    from selectmoe import register_trash_expert

    model = tiny_select_moe(quality_gate_init_std=0.5).eval()
    constant = torch.linspace(-1.0, 1.0, 32)
    register_trash_expert(lambda hidden_states, config: constant.expand_as(hidden_states))
    outputs: list[torch.Tensor] = []
    hook = model.model.layers[0].register_forward_hook(
        lambda module, args, output: outputs.append(output[0].detach())
    )
    with torch.no_grad():
        zero = model(input_ids=INPUT_IDS, output_router_logits=True)
        model.config.trash_expert_mode = "custom"
        model(input_ids=INPUT_IDS)
    hook.remove()
    good = torch.sigmoid(zero.router_logits[0]["quality_score"])  # (2, 6, 1)
    torch.testing.assert_close(outputs[1] - outputs[0], (1 - good) * constant)


def test_unknown_trash_mode_and_unregistered_custom(tiny_select_moe, no_custom_trash: None) -> None:
    model = tiny_select_moe()
    model.config.trash_expert_mode = "garbage"
    with pytest.raises(
        ConfigError, match=r"unknown trash_expert_mode 'garbage'; valid modes: zero, noise, custom"
    ):
        model(input_ids=INPUT_IDS)
    model.config.trash_expert_mode = "custom"
    with pytest.raises(ConfigError, match=r"no trash expert is registered"):
        model(input_ids=INPUT_IDS)


# ----------------------------------------------------------------------------------------------
# save / load and equivalence with OLMoE


def test_save_and_auto_load_round_trip(tiny_select_moe, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from selectmoe import SelectMoeConfig, SelectMoeForCausalLM, register_select_moe

    register_select_moe()
    model = tiny_select_moe(quality_loss_type="mse", quality_gate_init_std=0.4, lambda_var=0.7)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SelectMoeConfig) and config.model_type == "select_moe"
    assert (config.quality_loss_type, config.lambda_var) == ("mse", 0.7)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, SelectMoeForCausalLM)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    assert torch.equal(_logits(model.eval()), _logits(loaded.eval()))


def test_bypass_equals_olmoe(tiny_olmoe_dir: Path, tiny_converted_dir: Path) -> None:
    from transformers import OlmoeForCausalLM

    from selectmoe import SelectMoeForCausalLM

    olmoe = OlmoeForCausalLM.from_pretrained(tiny_olmoe_dir).eval()
    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).eval()
    expected = _logits(olmoe)
    gated = _logits(model)
    assert (gated - expected).abs().max() > 1e-3  # good ~ 0.5 halves the MoE output
    model.config.quality_gate_bypass = True
    assert (_logits(model) - expected).abs().max() <= 1e-5
    with torch.no_grad():
        olmoe_router = olmoe(input_ids=INPUT_IDS, output_router_logits=True).router_logits
        ours = model(input_ids=INPUT_IDS, output_router_logits=True).router_logits
    for theirs, mine in zip(olmoe_router, ours, strict=True):
        torch.testing.assert_close(mine["moe_logits"], theirs, rtol=0, atol=1e-5)


def test_experts_kernel_is_olmoes_and_switchable(tiny_olmoe_dir: Path, tiny_converted_dir: Path):
    """Select-MoE loads with the experts kernel OLMoE loads with, and both kernels agree."""
    from transformers import OlmoeForCausalLM

    from selectmoe import SelectMoeForCausalLM

    olmoe = OlmoeForCausalLM.from_pretrained(tiny_olmoe_dir).eval()
    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).eval()
    assert olmoe.config._experts_implementation == "grouped_mm"
    assert model.config._experts_implementation == olmoe.config._experts_implementation
    grouped = _logits(model)
    model.set_experts_implementation("eager")
    assert model.config._experts_implementation == "eager"
    torch.testing.assert_close(_logits(model), grouped, rtol=0, atol=1e-5)
    # training runs through the chosen kernel too: gradients reach the experts either way
    grads = {}
    for kernel in ("eager", "grouped_mm"):
        model.set_experts_implementation(kernel)
        model.zero_grad()
        model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS).loss.backward()
        grads[kernel] = model.model.layers[0].mlp.experts.gate_up_proj.grad.clone()
    assert grads["eager"].abs().sum() > 0
    torch.testing.assert_close(grads["grouped_mm"], grads["eager"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# loss parts


def test_loss_is_lm_plus_weighted_quality(tiny_select_moe) -> None:
    model = tiny_select_moe(
        quality_loss_weight=0.3, quality_gate_init_std=0.3, quality_loss_type="mse"
    )
    output = model(
        input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, output_router_logits=True
    )
    assert torch.equal(output.loss, output.lm_loss + 0.3 * output.quality_loss)
    expected_lm = causal_lm_loss(output.logits, LABELS, sample_wise=True)
    torch.testing.assert_close(output.lm_loss, expected_lm, rtol=0, atol=0)
    good = [torch.sigmoid(r["quality_score"].squeeze(-1)) for r in output.router_logits]
    manual = torch.stack(
        [((g**2 * MASK).sum(1) / MASK.sum(1)).mean() for g in good]
    ).mean()  # mse, sample-wise, averaged over layers
    torch.testing.assert_close(output.quality_loss, manual)
    torch.testing.assert_close(output.quality_loss, quality_loss(good, MASK, model.config))
    # changing the weight on the model takes effect at once
    model.config.quality_loss_weight = 2.0
    again = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS)
    torch.testing.assert_close(again.loss, output.lm_loss + 2.0 * output.quality_loss)
    model.config.sample_wise_averaging = False
    token_wise = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS)
    torch.testing.assert_close(
        token_wise.lm_loss, causal_lm_loss(output.logits, LABELS, sample_wise=False)
    )


def test_load_balancing_added_only_when_enabled(tiny_select_moe) -> None:
    from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

    model = tiny_select_moe(router_aux_loss_coef=0.5, quality_loss_weight=0.1)
    off = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, output_router_logits=True)
    expected_aux = load_balancing_loss_func(
        tuple(r["moe_logits"] for r in off.router_logits), 8, 2, MASK
    )
    torch.testing.assert_close(off.aux_loss, expected_aux)
    assert off.aux_loss.item() > 0
    assert torch.equal(off.loss, off.lm_loss + 0.1 * off.quality_loss)

    model.config.enable_load_balancing = True
    on = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS)
    assert on.router_logits is None  # not asked for, but the aux loss is still computed
    torch.testing.assert_close(on.aux_loss, expected_aux)
    torch.testing.assert_close(on.loss, on.lm_loss + 0.1 * on.quality_loss + 0.5 * expected_aux)
    assert on.loss.item() == pytest.approx(off.loss.item() + 0.5 * expected_aux.item(), rel=1e-6)
    without_labels = model(input_ids=INPUT_IDS, attention_mask=MASK)
    assert without_labels.loss is None and without_labels.quality_loss is None


def test_original_loss_scaling(tiny_select_moe) -> None:
    """The original code: token-mean CE + coef * (aux + w * L_quality), aux always in."""
    from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

    model = tiny_select_moe(router_aux_loss_coef=0.01, quality_loss_weight=0.01)
    model.config.loss_scaling = "original"
    out = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, output_router_logits=True)
    aux = load_balancing_loss_func(tuple(r["moe_logits"] for r in out.router_logits), 8, 2, MASK)
    token_mean = causal_lm_loss(out.logits, LABELS, sample_wise=False)
    torch.testing.assert_close(out.lm_loss, token_mean, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, token_mean + 0.01 * (aux + 0.01 * out.quality_loss))
    # the quality loss reaches the gate with weight 1e-4: a hundredth of the separate scaling's
    gate = model.model.layers[0].quality_gate.weight
    (original_grad,) = torch.autograd.grad(0.01 * 0.01 * out.quality_loss, gate, retain_graph=True)
    model.config.loss_scaling = "separate"
    separate = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS)
    torch.testing.assert_close(separate.loss, separate.lm_loss + 0.01 * separate.quality_loss)
    (separate_grad,) = torch.autograd.grad(0.01 * separate.quality_loss, gate)
    torch.testing.assert_close(original_grad * 100, separate_grad)
