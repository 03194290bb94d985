"""Scoring precision: do bfloat16 router data give the selections that float32 gives?

Two models are scored in float32 and in bfloat16 (on the CPU, where bfloat16 matmuls round like
a GPU's do) with ``selectmoe.stages.scoring.compute_router_data``:

1. the demo's converted model with a warmup's weights (``--demo-results``, a finished run) on the
   demo pool;
2. a Select-MoE model with the layer shapes of OLMoE-1B-7B (hidden 2048, 16 heads, 64 experts of
   1024, top-8; ``--layers`` of them, random weights) on random token sequences, once with the
   gates as converted (``N(0, 0.02)``) and once with gates ten times wider (a warmed gate's
   spread).

For each: the Spearman correlation of the seed's score (``mean_l sigmoid(quality_score)``)
between the two precisions, the largest difference of the routing features, and how much of a 5%
selection changes (``quality_topk`` and ``selectmoe`` with the same k, same seed: the share of
the float32 selection that the bfloat16 one does not contain).

Usage::

    python benchmarks/precision.py --demo-results results    # after the demo ran

The results replace the ``precision`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from results_md import replace_section

from selectmoe import SelectMoeConfig, SelectMoeForCausalLM
from selectmoe.data.encoding import EncodedExample, encode_examples, pad_token_id_of
from selectmoe.data.pool import load_pool
from selectmoe.data.router_data import RouterData
from selectmoe.evidence.diagnostics import spearman
from selectmoe.selection.select import select_indices
from selectmoe.stages.scoring import compute_router_data


def _router(quality: torch.Tensor, probs: torch.Tensor) -> RouterData:
    n = quality.shape[0]
    return RouterData(
        quality_score=quality,
        moe_probs=probs,
        sample_ids=[str(i) for i in range(n)],
        datasets=["pool"] * n,
        files=["memory"],
        file_offsets=[0, n],
        metadata=[{}],
    )


def compare(model, encoded, *, pad_id: int, batch_size: int, k: int) -> dict:
    """Score in float32 and bfloat16; compare scores, features and 5% selections."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        start = time.perf_counter()
        quality, probs = compute_router_data(
            model,
            [EncodedExample(list(e.input_ids), list(e.labels)) for e in encoded],
            batch_size=batch_size,
            pad_token_id=pad_id,
            device=torch.device("cpu"),
            progress=False,
        )
        results[dtype] = (_router(quality, probs), time.perf_counter() - start)
    (full, full_s), (half, half_s) = results[torch.float32], results[torch.bfloat16]
    row = {
        "n": full.n_samples,
        "spearman_score": spearman(full.scores, half.scores),
        "score_spread_f32": float(full.scores.std()),
        "max_abs_score_diff": float(np.abs(full.scores - half.scores).max()),
        "max_abs_feature_diff": float((full.features - half.features).abs().max()),
        "seconds_f32": round(full_s, 1),
        "seconds_bf16": round(half_s, 1),
    }
    params = {"auto_k": False, "k": k, "n_init": 2, "max_iters": 100}
    for method in ("quality_topk", "selectmoe"):
        chosen = [
            set(
                select_indices(
                    data, method=method, selection_percentage=0.05, clustering_params=params, seed=0
                ).indices.tolist()
            )
            for data in (full, half)
        ]
        row[f"changed_{method}"] = 1.0 - len(chosen[0] & chosen[1]) / len(chosen[0])
    return row


def demo_case(results_dir: Path, loss: str, batch_size: int) -> dict:
    from transformers import AutoTokenizer

    from selectmoe.model.warmed import load_warmed_model

    model_dir = next((results_dir / "models").glob("*/converted"))
    model, _ = load_warmed_model(model_dir, results_dir / "warmup" / loss / "full_rank_weights.pt")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = load_pool(sorted((results_dir / "demo" / "pool").glob("*/*.jsonl")))
    encoded = encode_examples(
        pool, tokenizer, full_sequence_prediction=True, max_sequence_length=256
    )
    return compare(
        model.eval(), encoded, pad_id=pad_token_id_of(tokenizer), batch_size=batch_size, k=8
    )


def olmoe_case(layers: int, n: int, gate_std: float, batch_size: int, seed: int) -> dict:
    from selectmoe.plan import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["allenai/OLMoE-1B-7B-0125"]  # the real layer shapes, fewer layers
    config = SelectMoeConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        num_experts=shape.num_experts,
        num_experts_per_tok=shape.experts_per_token,
        max_position_embeddings=4096,
        quality_gate_init_std=gate_std,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = SelectMoeForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(32, 97, (n,), generator=generator).tolist()
    encoded = [
        EncodedExample(
            torch.randint(2, 50304, (length,), generator=generator).tolist(), [-100] * length
        )
        for length in lengths
    ]
    return compare(model, encoded, pad_id=1, batch_size=batch_size, k=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-results", type=Path, default=Path("results"))
    parser.add_argument("--loss", default="sigmoid")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n", type=int, default=300, help="random sequences for the OLMoE case")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    if (args.demo_results / "warmup" / args.loss).is_dir():
        rows[f"demo, warmed gate ({args.loss})"] = demo_case(
            args.demo_results, args.loss, args.batch_size
        )
        print(json.dumps(rows), flush=True)
    for std, label in ((0.02, "as converted"), (0.2, "10x wider")):
        rows[f"OLMoE-1B-7B shapes, {args.layers} layers, gate {label}"] = olmoe_case(
            args.layers, args.n, std, args.batch_size, seed=0
        )
        print(json.dumps(rows), flush=True)
    command = "python benchmarks/precision.py " + shlex.join(sys.argv[1:])
    lines = [
        "<!-- precision:begin -->",
        f"## Scoring precision: bfloat16 against float32, CPU (`{command.strip()}`)",
        "",
        f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads. "
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}. A 5% selection's change is the share of "
        "the float32 selection that the bfloat16 one lacks (same k and seed).",
        "",
        "| model | n | Spearman of scores | score std (f32) | max \\|Δ score\\| "
        "| max \\|Δ feature\\| | 5% quality_topk changed | 5% selectmoe changed "
        "| s f32 / bf16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['n']} | {row['spearman_score']:.4f} | {row['score_spread_f32']:.2e} "
            f"| {row['max_abs_score_diff']:.2e} | {row['max_abs_feature_diff']:.2e} "
            f"| {row['changed_quality_topk']:.0%} | {row['changed_selectmoe']:.0%} "
            f"| {row['seconds_f32']} / {row['seconds_bf16']} |"
        )
    lines += ["<!-- precision:end -->", ""]
    if not args.no_write:
        replace_section(
            args.output, "\n".join(lines), ("<!-- precision:begin -->", "<!-- precision:end -->")
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
