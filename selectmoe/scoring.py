"""Stage 2: router data, one file per dataset.

For every example, per MoE layer ``l``:

- ``quality_score[n, l]``: the mean raw gate score over the sample's valid tokens;
- ``moe_probs[n, l, :]``: the mean over valid tokens of ``softmax(router_logits)``;

and ``n_tokens[n]``, the number of tokens the example was scored on (after truncation). Only these
per-sample values leave a batch, so memory does not grow with the number of tokens.

Without warmup weights the converted model is scored as it is: its quality gates hold their
random initialisation, which makes the *untrained-gate control* of the quality diagnostics
(:mod:`selectmoe.diagnostics`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from selectmoe.data import collate_encoded, encode_examples, load_pool, pad_token_id_of
from selectmoe.errors import DataError, ModelError
from selectmoe.io import atomic_torch_save
from selectmoe.modeling_select_moe import SelectMoeForCausalLM, register_select_moe
from selectmoe.training import length_sorted_batches, resolve_device
from selectmoe.warmup import load_warmed_model

__all__ = ["ROUTER_DATA_KEYS", "compute_router_data", "file_sha256", "score_dataset"]

logger = logging.getLogger(__name__)

ROUTER_DATA_KEYS: tuple[str, ...] = (
    "quality_score",
    "moe_probs",
    "sample_ids",
    "dataset",
    "n_tokens",
    "metadata",
)
"""Keys of a router-data file as written here (files without ``n_tokens`` still load)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.inference_mode()
def compute_router_data(
    model: torch.nn.Module,
    encoded: list,
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample router statistics of encoded examples.

    Only the decoder stack runs (the LM head's ``[B, T, vocab]`` logits are never computed) and
    only per-sample means leave a batch, so memory does not grow with the data.

    Returns
    -------
    quality_score : float32 tensor ``[N, L]``
    moe_probs : float32 tensor ``[N, L, E]``
        Both in the order of ``encoded`` (batches are length-sorted internally).
    """
    n_layers = model.config.num_hidden_layers
    n_experts = model.config.num_experts
    decoder = getattr(model, "model", model)  # SelectMoeForCausalLM -> SelectMoeModel
    quality_score = torch.zeros(len(encoded), n_layers, dtype=torch.float32)
    moe_probs = torch.zeros(len(encoded), n_layers, n_experts, dtype=torch.float32)
    # positions of the examples in ``encoded``, so that results land in input order
    for position, item in enumerate(encoded):
        item.index = position
    batches = length_sorted_batches(encoded, batch_size=batch_size)
    for batch_items in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
        batch = collate_encoded(batch_items, pad_token_id=pad_token_id)
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        # the decoder stack only: no LM head ([B, T, vocab] logits) and no KV cache
        output = decoder(
            input_ids=input_ids, attention_mask=mask, output_router_logits=True, use_cache=False
        )
        weights = mask.to(torch.float32)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (batch, seq_len)
        batch_quality = []
        batch_probs = []
        for router in output.router_logits:
            score = router["quality_score"].squeeze(-1).float()  # (batch, seq_len)
            batch_quality.append((score * weights).sum(dim=1))
            probs = torch.softmax(router["moe_logits"].float(), dim=-1)  # (batch*seq_len, E)
            probs = probs.view(input_ids.shape[0], input_ids.shape[1], n_experts)
            batch_probs.append((probs * weights.unsqueeze(-1)).sum(dim=1))
        rows = batch["index"]
        quality_score[rows] = torch.stack(batch_quality, dim=1).cpu()
        moe_probs[rows] = torch.stack(batch_probs, dim=1).cpu()
    return quality_score, moe_probs


def score_dataset(
    *,
    model_dir: str | os.PathLike[str],
    weights_path: str | os.PathLike[str] | None,
    pool_files: list[str | os.PathLike[str]],
    dataset: str,
    output_path: str | os.PathLike[str],
    batch_size: int = 16,
    max_sequence_length: int = 2048,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one dataset's pool files and write ``{dataset}_router_data.pt`` atomically.

    Scoring is deterministic for a given batch size; with ``trash_expert_mode="noise"`` the noise
    comes from ``torch.manual_seed(seed)`` and so also depends on how examples are batched.
    ``weights_path=None`` scores the converted model without warmup (the untrained gates).

    Returns
    -------
    dict
        The file's ``metadata`` plus the shapes.
    """
    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: converted model not found; run the convert stage first")
    torch_dtype = getattr(torch, dtype)
    run_device = resolve_device(device)
    if weights_path is None:
        register_select_moe()
        try:
            model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        except (OSError, ValueError) as error:
            raise ModelError(
                f"{model_dir}: cannot load the converted model "
                f"({str(error).splitlines()[0][:200]}); re-run the convert stage"
            ) from None
    else:
        model, _ = load_warmed_model(model_dir, weights_path, dtype=torch_dtype)
    model.to(run_device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_pool(pool_files)
    foreign = [e for e in examples if e.dataset != dataset]
    if foreign:
        raise DataError(
            f"{foreign[0].source}:{foreign[0].line}: example of dataset {foreign[0].dataset!r} "
            f"in the files of dataset {dataset!r}; keep one dataset per directory"
        )
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=True,
        max_sequence_length=max_sequence_length,
    )
    pad_id = pad_token_id_of(tokenizer)
    torch.manual_seed(seed)
    start = time.perf_counter()
    quality_score, moe_probs = compute_router_data(
        model,
        encoded,
        batch_size=batch_size,
        pad_token_id=pad_id,
        device=run_device,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    n_tokens = sum(len(e.input_ids) for e in encoded)
    metadata = {
        "model": os.fspath(model_dir),
        "weights": None if weights_path is None else os.fspath(weights_path),
        "weights_sha256": None if weights_path is None else file_sha256(weights_path),
        "pool_files": [os.fspath(p) for p in pool_files],
        "template": "selectmoe-chat-v1",
        "max_sequence_length": max_sequence_length,
        "quality_loss_type": model.config.quality_loss_type,
        "trash_expert_mode": model.config.trash_expert_mode,
        "dtype": dtype,
        "batch_size": batch_size,
        "seed": seed,
        "n_tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1),
    }
    atomic_torch_save(
        {
            "quality_score": quality_score,
            "moe_probs": moe_probs,
            "sample_ids": [e.id for e in examples],
            "dataset": dataset,
            "n_tokens": torch.tensor([len(e.input_ids) for e in encoded], dtype=torch.int64),
            "metadata": metadata,
        },
        output_path,
    )
    logger.info(
        "%s: %d samples, %d tokens, %.1f tokens/s -> %s",
        dataset,
        len(examples),
        n_tokens,
        metadata["tokens_per_second"],
        Path(output_path),
    )
    return {**metadata, "n_samples": len(examples), "shape": list(moe_probs.shape)}
