"""The Select-MoE model: OLMoE with a quality gate and a trash expert in every MoE layer.

Built on the OLMoE classes of the pinned transformers 5.x (``OlmoeTopKRouter`` holding the raw
router ``weight``, fused ``OlmoeExperts``), so every OLMoE weight keeps its name and a converted
checkpoint loads into OLMoE's layout unchanged; the only new weights are
``model.layers.{i}.quality_gate.weight``.

Per decoder layer, on the post-attention-layernorm output ``h`` (the tensor the router sees)::

    quality_score = h @ w_q                       # (batch, seq_len, 1)
    good = sigmoid(quality_score); bad = 1 - good
    y = good * moe(h) + bad * trash(h)            # then the residual
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.models.olmoe.modeling_olmoe import (
    OlmoeDecoderLayer,
    OlmoePreTrainedModel,
    OlmoeRMSNorm,
    OlmoeRotaryEmbedding,
    load_balancing_loss_func,
)

from selectmoe.catalogue import register_name
from selectmoe.errors import ConfigError
from selectmoe.model.configuration_select_moe import TRASH_EXPERT_MODES, SelectMoeConfig
from selectmoe.model.losses import causal_lm_loss, quality_loss

__all__ = [
    "SelectMoeCausalLMOutput",
    "SelectMoeDecoderLayer",
    "SelectMoeForCausalLM",
    "SelectMoeModel",
    "SelectMoeModelOutput",
    "SelectMoePreTrainedModel",
    "SelectMoeQualityGate",
    "check_trash_expert_mode",
    "initialize_quality_gates",
    "register_select_moe",
    "register_trash_expert",
]

TrashExpertFn = Callable[[torch.Tensor, SelectMoeConfig], torch.Tensor]
_CUSTOM_TRASH_EXPERT: list[TrashExpertFn] = []


def register_trash_expert(fn: TrashExpertFn) -> TrashExpertFn:
    """Register the callable used by ``trash_expert_mode="custom"``.

    It receives ``h`` (``[B, T, H]``) and the config and returns a tensor of the same shape.
    """
    _CUSTOM_TRASH_EXPERT[:] = [fn]
    register_name("trash_expert", "custom")
    return fn


def check_trash_expert_mode(mode: str) -> None:
    """Fail at once (before a model loads) on a mode that :func:`trash_expert` cannot run.

    Raises
    ------
    ConfigError
        For an unknown mode (listing the valid ones), or ``custom`` with nothing registered.
    """
    if mode not in TRASH_EXPERT_MODES:
        raise ConfigError(
            f"unknown trash_expert_mode {mode!r}; valid modes: {', '.join(TRASH_EXPERT_MODES)}"
        )
    if mode == "custom" and not _CUSTOM_TRASH_EXPERT:
        raise ConfigError(
            "trash_expert_mode is 'custom' but no trash expert is registered; register one with "
            "selectmoe.model.modeling_select_moe.register_trash_expert in a plugin module (config "
            "key plugins)"
        )


def trash_expert(hidden_states: torch.Tensor, config: SelectMoeConfig) -> torch.Tensor:
    """The trash expert's output ``[B, T, H]`` for ``hidden_states`` under the configured mode."""
    mode = config.trash_expert_mode
    if mode == "zero":
        return torch.zeros_like(hidden_states)
    if mode == "noise":
        # the trash path imitates the token's statistics but carries no information and no gradient
        with torch.no_grad():
            mean = hidden_states.mean(dim=-1, keepdim=True)
            std = hidden_states.std(dim=-1, keepdim=True)
            return torch.randn_like(hidden_states) * std + mean
    if mode == "custom":
        if not _CUSTOM_TRASH_EXPERT:
            raise ConfigError(
                "trash_expert_mode is 'custom' but no trash expert is registered; "
                "call selectmoe.register_trash_expert(fn) first"
            )
        return _CUSTOM_TRASH_EXPERT[0](hidden_states, config)
    raise ConfigError(
        f"unknown trash_expert_mode {mode!r}; valid modes: {', '.join(TRASH_EXPERT_MODES)}"
    )


class SelectMoeQualityGate(nn.Module):
    """Per-token quality score: ``Linear(hidden_size, 1, bias=False)``.

    A module of its own (not an ``nn.Linear``) so that the framework's generic Linear init never
    overwrites the configured ``N(quality_gate_init_mean, quality_gate_init_std)``.
    """

    def __init__(self, config: SelectMoeConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, H] -> [B, T, 1]`` raw scores (logits of ``good``)."""
        return F.linear(hidden_states, self.weight)


class SelectMoeDecoderLayer(OlmoeDecoderLayer):
    """OLMoE decoder layer whose MoE output is mixed with a trash expert by the quality gate."""

    def __init__(self, config: SelectMoeConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.config = config
        self.quality_gate = SelectMoeQualityGate(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Layer output ``[B, T, H]`` and the router output of SPEC §3.

        The router output is ``{"quality_score": [B, T, 1], "moe_logits": [B*T, E]}``.
        """
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        batch_size, seq_len, hidden_size = hidden_states.shape
        quality_score = self.quality_gate(hidden_states)  # (batch, seq_len, 1)

        flat = hidden_states.reshape(-1, hidden_size)
        # moe_logits: (batch * seq_len, n_experts)
        moe_logits, top_k_weights, top_k_index = self.mlp.gate(flat)
        moe_output = self.mlp.experts(flat, top_k_index, top_k_weights)
        moe_output = moe_output.reshape(batch_size, seq_len, hidden_size)

        if self.config.quality_gate_bypass:
            mixed = moe_output
        else:
            good = torch.sigmoid(quality_score).to(moe_output.dtype)
            if self.config.trash_expert_mode == "zero":
                mixed = good * moe_output  # bad * 0 needs no kernel
            else:
                mixed = good * moe_output + (1 - good) * trash_expert(hidden_states, self.config)
        router_output = {"quality_score": quality_score, "moe_logits": moe_logits}
        return residual + mixed, router_output


@dataclass
class SelectMoeModelOutput(MoeModelOutputWithPast):
    """Base-model output.

    router_logits (`tuple[dict]`, present with ``output_router_logits=True``):
        One dict per layer: ``quality_score`` ``(batch, seq_len, 1)`` raw gate scores and
        ``moe_logits`` ``(batch * seq_len, n_experts)`` router logits.
    """


@dataclass
class SelectMoeCausalLMOutput(MoeCausalLMOutputWithPast):
    """Causal-LM output with the loss parts.

    loss (scalar, with labels): ``lm_loss + quality_loss_weight * quality_loss
        [+ router_aux_loss_coef * aux_loss if enable_load_balancing]``; with
        ``loss_scaling="original"``, ``lm_loss (token mean) + router_aux_loss_coef *
        (aux_loss + quality_loss_weight * quality_loss)``.
    lm_loss (scalar, with labels): cross entropy (sample-wise averaged if configured).
    quality_loss (scalar, with labels): the quality loss averaged over layers (unweighted).
    aux_loss (scalar, with ``output_router_logits``): OLMoE's load-balancing loss.
    router_logits (`tuple[dict]`, with ``output_router_logits``): see :class:`SelectMoeModelOutput`.
    """

    lm_loss: torch.Tensor | None = None
    quality_loss: torch.Tensor | None = None


class SelectMoePreTrainedModel(OlmoePreTrainedModel):
    """Weight init and class attributes shared by the Select-MoE models."""

    config_class = SelectMoeConfig
    config: SelectMoeConfig
    _no_split_modules = ["SelectMoeDecoderLayer"]
    _can_record_outputs = {}
    _can_compile_fullgraph = False

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        """Whether the experts kernel (``grouped_mm``, ...) can be chosen: exactly when OLMoE's can.

        transformers decides this by searching the model class's module source for its experts
        decorator. The decoder layers here run OLMoE's own experts module, so the answer is
        OLMoE's; without this the model silently falls back to the per-expert Python loop
        (``eager``) while OLMoE of the same config uses ``grouped_mm``.
        """
        return OlmoePreTrainedModel._can_set_experts_implementation()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SelectMoeQualityGate):
            init.normal_(
                module.weight,
                mean=self.config.quality_gate_init_mean,
                std=self.config.quality_gate_init_std,
            )
        else:
            super()._init_weights(module)


class SelectMoeModel(SelectMoePreTrainedModel):
    """The decoder stack; returns per-layer router outputs when asked."""

    def __init__(self, config: SelectMoeConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [SelectMoeDecoderLayer(config, index) for index in range(config.num_hidden_layers)]
        )
        self.norm = OlmoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = OlmoeRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SelectMoeModelOutput:
        """Run the stack on ``input_ids`` ``[B, T]`` (or ``inputs_embeds`` ``[B, T, H]``)."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        output_router_logits = (
            self.config.output_router_logits
            if output_router_logits is None
            else output_router_logits
        )
        output_hidden_states = (
            self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states
        )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (
                torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            )
            position_ids = position_ids.unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states: list[torch.Tensor] = []
        router_outputs: list[dict[str, torch.Tensor]] = []
        for layer in self.layers[: self.config.num_hidden_layers]:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, router_output = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            router_outputs.append(router_output)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return SelectMoeModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            router_logits=tuple(router_outputs) if output_router_logits else None,
        )


class SelectMoeForCausalLM(SelectMoePreTrainedModel, GenerationMixin):
    """Select-MoE causal language model."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SelectMoeConfig) -> None:
        super().__init__(config)
        self.model = SelectMoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SelectMoeCausalLMOutput:
        """Logits ``[B, T, V]``; with ``labels`` the total loss and its parts.

        The router outputs are computed whenever labels are given (the quality loss needs them)
        and returned when ``output_router_logits`` (or the config's) is true.
        """
        want_router = (
            self.config.output_router_logits
            if output_router_logits is None
            else output_router_logits
        )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=True,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)

        router_outputs = outputs.router_logits
        loss = lm_loss = q_loss = aux_loss = None
        original = self.config.loss_scaling == "original"
        if labels is not None:
            # the original code's CE is the token mean of the transformers loss
            sample_wise = self.config.sample_wise_averaging and not original
            lm_loss = causal_lm_loss(logits, labels, sample_wise=sample_wise)
            good_per_layer = [torch.sigmoid(r["quality_score"].squeeze(-1)) for r in router_outputs]
            q_loss = quality_loss(good_per_layer, attention_mask, self.config)
        with_balance = labels is not None and (self.config.enable_load_balancing or original)
        if want_router or with_balance:
            aux_loss = load_balancing_loss_func(
                tuple(r["moe_logits"] for r in router_outputs),
                self.config.num_experts,
                self.config.num_experts_per_tok,
                attention_mask,
            )
        if labels is not None:
            weighted_quality = self.config.quality_loss_weight * q_loss.to(lm_loss.dtype)
            if original:
                # CE + coef * (aux + w * L_quality): the balancing term always in (as the
                # original's OLMoE forward added it), the quality weight scaled by the coef too
                balance = aux_loss.to(lm_loss.device)
                loss = lm_loss + self.config.router_aux_loss_coef * (balance + weighted_quality)
            else:
                loss = lm_loss + weighted_quality
                if self.config.enable_load_balancing:
                    loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return SelectMoeCausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            quality_loss=q_loss,
            aux_loss=aux_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            router_logits=router_outputs if want_router else None,
        )


@torch.no_grad()
def initialize_quality_gates(model: nn.Module, seed: int) -> int:
    """Draw every quality gate of ``model`` anew from ``N(quality_gate_init_mean, std)``.

    A selection replicate starts its warmup from its own gates (the converted model's come from
    ``base_model.conversion_seed``, shared by every replicate). The draws come from a generator
    seeded by ``seed``, gate after gate in module order, so they do not depend on the global
    random state.

    Parameters
    ----------
    model : nn.Module
        A Select-MoE model (or one wrapping it); its gates are the :class:`SelectMoeQualityGate`
        modules, each of weight shape ``[1, hidden_size]``.
    seed : int

    Returns
    -------
    int
        The number of gates drawn.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    gates = [m for m in model.modules() if isinstance(m, SelectMoeQualityGate)]
    for gate in gates:
        config = model.config if hasattr(model, "config") else None
        mean = getattr(config, "quality_gate_init_mean", 0.0)
        std = getattr(config, "quality_gate_init_std", 0.02)
        drawn = torch.randn(gate.weight.shape, generator=generator, dtype=torch.float32)
        gate.weight.copy_((drawn * std + mean).to(gate.weight.dtype))
    return len(gates)


def register_select_moe() -> None:
    """Register ``select_moe`` with ``AutoConfig`` and ``AutoModelForCausalLM`` (idempotent)."""
    try:
        AutoConfig.register("select_moe", SelectMoeConfig)
    except ValueError:
        pass  # already registered
    try:
        AutoModelForCausalLM.register(SelectMoeConfig, SelectMoeForCausalLM)
    except ValueError:
        pass
