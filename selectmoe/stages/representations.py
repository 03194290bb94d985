"""RDS+ representations: one forward pass of a model (the target's base by default, as the
authors do) over every example, its final hidden states pooled to one vector.

The pooling is the authors' ``weighted_mean`` (after SGPT, Muennighoff 2022): position ``i``
(from 1) of an example of ``L`` tokens weighs ``i / sum_{j=1..L} j``, so later tokens, which have
read more of the example, count more. The authors' script weighs every position of a padded
batch, padding included, so an example's vector depends on its batch; here the weights run over
each example's own tokens only, which is the same for an unpadded example and does not depend
on the batch. The example is
the whole conversation (prompt and answer), rendered and tokenized as for training.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from selectmoe.data.encoding import (
    DEFAULT_TEMPLATE,
    collate_encoded,
    encode_examples,
    length_sorted_batches,
    pad_token_id_of,
)
from selectmoe.data.pool import Example, load_jsonl_examples
from selectmoe.data.queries import QUERY_TEMPLATE, load_queries
from selectmoe.errors import ConfigError
from selectmoe.model.source import require_model_source
from selectmoe.schema import section_defaults
from selectmoe.selection.targeted import save_features
from selectmoe.training.distributed import resolve_device

__all__ = [
    "RepresentationSettings",
    "compute_representations",
    "run_representations",
    "weighted_mean_pool",
]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


_TARGETED_RDS_DEFAULTS = section_defaults("targeted.rds")


@dataclass(frozen=True)
class RepresentationSettings:
    """``targeted.rds`` of the config."""

    batch_size: int = _TARGETED_RDS_DEFAULTS["batch_size"]
    max_sequence_length: int = _TARGETED_RDS_DEFAULTS["max_sequence_length"]
    dtype: str = _TARGETED_RDS_DEFAULTS["dtype"]
    device: str = _TARGETED_RDS_DEFAULTS["device"]
    template: str = DEFAULT_TEMPLATE  # data.template

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"targeted.rds.dtype is {self.dtype!r}; valid: {', '.join(_DTYPES)}")
        for key in ("batch_size", "max_sequence_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"targeted.rds.{key} is {getattr(self, key)}; it must be >= 1")


def weighted_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean of ``hidden`` ``[B, T, H]`` over the real tokens of
    ``attention_mask`` ``[B, T]`` (right-padded): ``[B, H]`` in float32."""
    positions = attention_mask.to(torch.float32).cumsum(dim=1) * attention_mask  # 1..L, 0 after
    weights = positions / positions.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.einsum("bth,bt->bh", hidden.to(torch.float32), weights)


@torch.inference_mode()
def compute_representations(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    settings: RepresentationSettings,
    device: torch.device,
) -> torch.Tensor:
    """Pooled final hidden states of ``examples``: ``[N, H]`` float32, in input order.

    ``model`` is a decoder without its LM head (``AutoModel``): its output's
    ``last_hidden_state`` is the final layer's output after the final norm, as
    ``hidden_states[-1]`` of the causal-LM model the authors read. Batches are sorted by length.
    """
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=True,
        max_sequence_length=settings.max_sequence_length,
        template=settings.template,
    )
    pad_id = pad_token_id_of(tokenizer)
    pooled: torch.Tensor | None = None
    for batch_items in length_sorted_batches(encoded, batch_size=settings.batch_size):
        batch = collate_encoded(batch_items, pad_token_id=pad_id)
        mask = batch["attention_mask"].to(device)
        hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
        vectors = weighted_mean_pool(hidden.last_hidden_state, mask).cpu()
        if pooled is None:
            pooled = torch.empty(len(encoded), vectors.shape[1], dtype=torch.float32)
        pooled[batch["index"]] = vectors
    assert pooled is not None  # encode_examples refuses an empty list
    return pooled


def run_representations(
    *,
    model_source: str,
    data_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: RepresentationSettings,
    queries: bool = False,
) -> dict[str, Any]:
    """Write the representations of one pool dataset file, or of the query file (``queries``),
    as a features file (:func:`selectmoe.selection.targeted.save_features`, one "checkpoint")."""
    from transformers import AutoModel, AutoTokenizer

    query_set = load_queries(data_path) if queries else None
    examples = query_set.examples if query_set else load_jsonl_examples(data_path)
    if queries:  # rendered as LESS renders its validation sets
        settings = replace(settings, template=QUERY_TEMPLATE)
    require_model_source(model_source, what="representation model")
    device = resolve_device(settings.device)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_source)
    model = AutoModel.from_pretrained(model_source, dtype=getattr(torch, settings.dtype))
    model.to(device).eval()
    pooled = compute_representations(model, tokenizer, examples, settings=settings, device=device)
    seconds = time.perf_counter() - start
    save_features(
        output,
        kind="representations",
        features=pooled[None],
        sample_ids=[e.id for e in examples],
        datasets=[e.dataset for e in examples],
        tasks=query_set.tasks if query_set else None,
        subtasks=query_set.subtasks if query_set else None,
        model=model_source,
        signature=f"{model_source}; weighted mean pool of the final hidden states",
        settings=asdict(settings),
    )
    logger.info(
        "%d representations of size %d in %.1f s -> %s",
        len(examples),
        pooled.shape[1],
        seconds,
        output,
    )
    return {"n_examples": len(examples), "hidden_size": pooled.shape[1], "seconds": seconds}
