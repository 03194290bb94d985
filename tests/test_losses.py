"""Quality losses: registry, gradients, weighted statistics, padding, and the LM loss."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from selectmoe.errors import ConfigError
from selectmoe.model import losses
from selectmoe.model.losses import (
    available_quality_losses,
    causal_lm_loss,
    get_quality_loss,
    quality_loss,
    register_quality_loss,
    token_weights,
    weighted_mean_var,
)

BUILT_IN = ["sigmoid", "mse", "beta_moment_matching", "mean_variance_regularization"]


def _config(**changes) -> SimpleNamespace:
    values = {
        "quality_loss_type": "sigmoid",
        "sample_wise_averaging": True,
        "beta_target_mean": 0.5,
        "beta_target_var": 0.05,
        "w_mean": 1.0,
        "w_var": 1.0,
        "lambda_var": 0.1,
        "quality_loss_debug": False,
    }
    values.update(changes)
    return SimpleNamespace(**values)


@pytest.fixture
def custom_loss_name() -> Iterator[str]:
    """A name for a test-registered loss, removed from the registry afterwards."""
    name = "tiny_test_custom_loss"
    yield name
    losses._REGISTRY.pop(name, None)


def test_builtins_are_registered() -> None:
    assert set(BUILT_IN) <= set(available_quality_losses())
    assert available_quality_losses() == sorted(available_quality_losses())


@pytest.mark.parametrize("loss_type", BUILT_IN)
def test_gradient_reaches_good_and_only_valid_tokens(loss_type: str) -> None:
    torch.manual_seed(1)
    good = torch.rand(3, 5, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    loss = get_quality_loss(loss_type)(good, mask, _config())
    assert loss.ndim == 0
    (grad,) = torch.autograd.grad(loss, good)
    assert torch.all(grad[mask.bool()] != 0)
    assert torch.all(grad[~mask.bool()] == 0)


@pytest.mark.parametrize("loss_type", BUILT_IN)
def test_gradient_reaches_the_gate_weights_through_the_model(
    tiny_tokenizer, tiny_select_moe, loss_type: str
) -> None:
    # a spread-out gate so that the batch statistics are away from every loss's optimum
    model = tiny_select_moe(
        quality_loss_type=loss_type,
        quality_gate_init_mean=0.0,
        quality_gate_init_std=0.5,
    )
    input_ids = torch.randint(
        4, len(tiny_tokenizer), (2, 7), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(input_ids)
    mask[1, 5:] = 0
    output = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    output.quality_loss.backward()
    for layer in model.model.layers:
        grad = layer.quality_gate.weight.grad
        assert grad is not None and grad.shape == (1, 32)
        assert grad.abs().max() > 1e-3, loss_type
    # the quality loss alone does not touch the language-model head
    assert model.lm_head.weight.grad is None or torch.all(model.lm_head.weight.grad == 0)


@pytest.mark.parametrize("loss_type", ["beta_moment_matching", "mean_variance_regularization"])
@pytest.mark.parametrize("sample_wise", [True, False])
def test_finite_difference_gradient(loss_type: str, sample_wise: bool) -> None:
    torch.manual_seed(2)
    good = torch.rand(3, 6, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    config = _config(sample_wise_averaging=sample_wise, lambda_var=0.3, beta_target_var=0.2)
    fn = get_quality_loss(loss_type)
    assert torch.autograd.gradcheck(lambda g: fn(g, mask, config), (good,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_type", BUILT_IN)
@pytest.mark.parametrize("sample_wise", [True, False])
def test_padding_changes_nothing(loss_type: str, sample_wise: bool) -> None:
    torch.manual_seed(3)
    good = torch.rand(2, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    padded_good = torch.cat([good, torch.rand(2, 3, dtype=torch.float64)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=mask.dtype)], dim=1)
    # the masked entries of the original hold junk too: they must not count either
    padded_good[1, 2:4] = 0.999
    config = _config(quality_loss_type=loss_type, sample_wise_averaging=sample_wise)
    fn = get_quality_loss(loss_type)
    torch.testing.assert_close(fn(padded_good, padded_mask, config), fn(good, mask, config))
    torch.testing.assert_close(
        quality_loss([padded_good, padded_good**2], padded_mask, config),
        quality_loss([good, good**2], mask, config),
    )


def test_padding_changes_nothing_through_the_model(tiny_tokenizer, tiny_select_moe) -> None:
    model = tiny_select_moe(quality_loss_type="mean_variance_regularization")
    input_ids = torch.randint(
        4, len(tiny_tokenizer), (1, 6), generator=torch.Generator().manual_seed(1)
    )
    plain = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids)
    pad = tiny_tokenizer.pad_token_id
    padded_ids = torch.cat([input_ids, torch.full((1, 3), pad)], dim=1)
    padded_mask = torch.cat(
        [torch.ones_like(input_ids), torch.zeros(1, 3, dtype=torch.long)], dim=1
    )
    padded_labels = torch.cat([input_ids, torch.full((1, 3), -100)], dim=1)
    padded = model(input_ids=padded_ids, attention_mask=padded_mask, labels=padded_labels)
    torch.testing.assert_close(padded.quality_loss, plain.quality_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(padded.lm_loss, plain.lm_loss, rtol=1e-6, atol=1e-7)


def test_sample_wise_weighs_short_and_long_samples_the_same() -> None:
    # sample 0: one valid token (0.9); sample 1: three valid tokens (0.1, 0.2, 0.3) and padding
    good = torch.tensor([[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    sample_mean = (0.9 + (0.1 + 0.2 + 0.3) / 3) / 2  # 0.55
    token_mean = (0.9 + 0.1 + 0.2 + 0.3) / 4  # 0.375
    sigmoid = get_quality_loss("sigmoid")
    mse = get_quality_loss("mse")
    assert sigmoid(good, mask, _config(sample_wise_averaging=True)).item() == pytest.approx(
        sample_mean, abs=1e-7
    )
    assert sigmoid(good, mask, _config(sample_wise_averaging=False)).item() == pytest.approx(
        token_mean, abs=1e-7
    )
    assert mse(good, mask, _config(sample_wise_averaging=True)).item() == pytest.approx(
        (0.81 + (0.01 + 0.04 + 0.09) / 3) / 2, abs=1e-7
    )
    weights = token_weights(mask, sample_wise=True)
    torch.testing.assert_close(
        weights, torch.tensor([[0.5, 0.0, 0.0], [1 / 6, 1 / 6, 1 / 6]]), rtol=0, atol=1e-7
    )
    mean, var = weighted_mean_var(good, mask, sample_wise=True)
    expected_var = 0.5 * (0.9 - 0.55) ** 2 + sum((g - 0.55) ** 2 for g in (0.1, 0.2, 0.3)) / 6
    assert mean.item() == pytest.approx(sample_mean, abs=1e-7)
    assert var.item() == pytest.approx(expected_var, abs=1e-7)
    mvr = get_quality_loss("mean_variance_regularization")
    assert mvr(good, mask, _config(lambda_var=0.1)).item() == pytest.approx(
        (sample_mean - 0.5) ** 2 - 0.1 * expected_var, abs=1e-7
    )
    bmm = get_quality_loss("beta_moment_matching")
    assert bmm(good, mask, _config(w_mean=2.0, w_var=3.0)).item() == pytest.approx(
        2.0 * (sample_mean - 0.5) ** 2 + 3.0 * (expected_var - 0.05) ** 2, abs=1e-7
    )


def test_a_sample_without_valid_tokens_does_not_count() -> None:
    good = torch.tensor([[0.9, 0.9], [0.2, 0.4]], dtype=torch.float64)
    mask = torch.tensor([[0, 0], [1, 1]])
    weights = token_weights(mask, sample_wise=True)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))
    assert get_quality_loss("sigmoid")(good, mask, _config()).item() == pytest.approx(0.3)


def test_quality_loss_averages_layers_and_reads_config_at_call_time() -> None:
    mask = torch.ones(1, 2)
    layers = [torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 0.8]])]
    config = _config(quality_loss_type="sigmoid")
    assert quality_loss(layers, mask, config).item() == pytest.approx((0.3 + 0.7) / 2)
    config.quality_loss_type = "mse"
    assert quality_loss(layers, None, config).item() == pytest.approx(
        ((0.04 + 0.16) / 2 + (0.36 + 0.64) / 2) / 2
    )


def test_unknown_type_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown quality_loss_type 'sigmoidd'; valid types: "
    ) as info:
        get_quality_loss("sigmoidd")
    for name in BUILT_IN:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown quality_loss_type 'nope'"):
        quality_loss([torch.rand(1, 2)], None, _config(quality_loss_type="nope"))


def test_register_twice_needs_overwrite(custom_loss_name: str) -> None:
    register_quality_loss(custom_loss_name, lambda good, mask, config: good.sum())
    with pytest.raises(
        ConfigError, match=f"quality loss '{custom_loss_name}' is already registered"
    ):
        register_quality_loss(custom_loss_name, lambda good, mask, config: good.mean())
    register_quality_loss(custom_loss_name, lambda good, mask, config: good.mean(), overwrite=True)
    assert get_quality_loss(custom_loss_name)(torch.tensor([[1.0, 3.0]]), None, None).item() == 2.0
    assert custom_loss_name in available_quality_losses()


def test_custom_loss_is_used_by_a_loaded_model(tiny_converted_dir, custom_loss_name: str) -> None:
    from selectmoe import SelectMoeForCausalLM

    calls: list[tuple[tuple[int, ...], float]] = []

    @register_quality_loss(custom_loss_name)
    def _custom(good: torch.Tensor, mask: torch.Tensor, config) -> torch.Tensor:
        calls.append((tuple(good.shape), float(mask.sum())))
        # max of the gate over valid tokens, shifted: a value no built-in produces
        return (good * mask).max() + 10.0

    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir).eval()
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    before = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    assert before.quality_loss.item() == pytest.approx(0.5, abs=0.05)  # sigmoid at init
    assert calls == []
    model.config.quality_loss_type = custom_loss_name
    model.config.quality_loss_weight = 0.25
    after = model(
        input_ids=input_ids, attention_mask=mask, labels=input_ids, output_router_logits=True
    )
    assert calls == [((2, 4), 7.0)] * model.config.num_hidden_layers
    expected = torch.stack(
        [
            (torch.sigmoid(r["quality_score"].squeeze(-1)) * mask).max() + 10.0
            for r in after.router_logits
        ]
    ).mean()
    torch.testing.assert_close(after.quality_loss, expected)
    torch.testing.assert_close(after.loss, after.lm_loss + 0.25 * expected)


def test_quality_loss_debug_logs_the_parts(caplog: pytest.LogCaptureFixture) -> None:
    layers = [torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 0.8]])]
    with caplog.at_level("INFO", logger="selectmoe.model.losses"):
        quality_loss(layers, None, _config(quality_loss_debug=True))
    (record,) = caplog.records
    assert "quality loss sigmoid: per layer [0.3, 0.7]" in record.getMessage()
    assert "good mean [0.3, 0.7]" in record.getMessage()


# ----------------------------------------------------------------------------------------------
# causal LM loss


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_causal_lm_loss_sample_wise_and_token_wise_exact() -> None:
    # vocabulary of 3; position t's logits predict the label at t + 1
    logits = torch.tensor(
        [
            [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
            [[0.5, 1.5, 0.0], [1.0, -1.0, 3.0], [0.0, 2.0, 1.0], [9.0, 9.0, 9.0]],
            [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],
        ]
    )
    labels = torch.tensor(
        [
            [-100, 0, -100, -100],  # one label: logits[0, 0] -> 0
            [-100, 1, 2, 1],  # three labels
            [-100, -100, -100, -100],  # none: does not count
        ]
    )
    l0 = _ce([2.0, 0.0, -1.0], 0)
    l1 = [_ce([0.5, 1.5, 0.0], 1), _ce([1.0, -1.0, 3.0], 2), _ce([0.0, 2.0, 1.0], 1)]
    sample_wise = causal_lm_loss(logits, labels, sample_wise=True)
    token_wise = causal_lm_loss(logits, labels, sample_wise=False)
    assert sample_wise.item() == pytest.approx((l0 + sum(l1) / 3) / 2, rel=1e-6)
    assert token_wise.item() == pytest.approx((l0 + sum(l1)) / 4, rel=1e-6)
    assert sample_wise.item() != pytest.approx(token_wise.item(), rel=1e-3)
    # equals PyTorch's own mean when every sample has the same number of labels
    same = labels.clone()
    same[0] = torch.tensor([-100, 0, 1, 2])
    expected = torch.nn.functional.cross_entropy(
        logits[:2, :-1].reshape(-1, 3), same[:2, 1:].reshape(-1)
    )
    torch.testing.assert_close(causal_lm_loss(logits[:2], same[:2], sample_wise=True), expected)
    torch.testing.assert_close(causal_lm_loss(logits[:2], same[:2], sample_wise=False), expected)


def test_causal_lm_loss_without_any_label_is_zero() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), -100)
    for sample_wise in (True, False):
        loss = causal_lm_loss(logits, labels, sample_wise=sample_wise)
        assert loss.item() == 0.0 and math.isfinite(loss.item())
