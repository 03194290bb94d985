"""The embedded demo: a tiny, fully local world for running the workflow without GPU or network.

:func:`build_demo` writes, deterministically from one seed::

    out_dir/
      tokenizer/                     byte-level BPE tokenizer (transformers format)
      base_model/                    tiny OlmoeForCausalLM + tokenizer (float32 safetensors)
      target_model/                  tiny LlamaForCausalLM + tokenizer (float32 safetensors)
      pool/{dataset}/{dataset}_data.jsonl   LESS-format pool, dataset in cot, dolly, flan_v2, oasst1
      noise_labels.jsonl             which pool examples are planted noise, and of which kind
      tasks/{task}.yaml, {task}.jsonl      lm-eval multiple-choice tasks over held-out questions
      demo_manifest.json             parameters, counts, model summaries, file hashes

Everything comes from small generators over an invented world (countries with capitals,
currencies, languages and national animals; an invented lexicon; word problems; sentiment word
lists), so the data are *learnable*: the answers follow from the question and the world's facts,
and planted noise (wrong answers, shuffled, truncated, junk, near duplicates) teaches wrong
things. The models are tiny, so accuracies move by a few points, not tens. The noise labels are
only in the sidecar file: ids are ``{dataset}_{position}`` and planted examples sit at random
positions.

Held-out evaluation questions never occur verbatim as a user message of the pool or of the
pretraining corpus: arithmetic and sentiment questions come from their own random stream and
any collision with the pool is skipped; fact questions use phrasings that the pool never uses
(the facts themselves are in the pool, so that finetuning on clean data can help).

Both models are briefly pretrained (plain causal LM on packed documents, each starting with
``<s>``) on a clean corpus from the same generators but another random stream, rendered with the
chat template of SPEC §4, so the base model's routers and the target's heads mean something. The
target gets fewer steps so that finetuning has room to improve it.

The tokenizer is byte-level BPE (every string, "\n" and junk included, round-trips exactly) with
``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3 and the chat tags as single special tokens; like
Llama's, it puts ``<s>`` in front when ``add_special_tokens`` is true (so lm-eval's prompts start
with it, as the pretraining documents and ``selectmoe.data.encoding.encode_examples`` do).

Reproducibility: the pool, labels and task files are byte-identical for a given seed. The models
are reproducible on the same machine with the same number of torch threads (float reductions may
differ in the last bits across thread counts or CPUs).

Written for transformers 5.x (``OlmoeForCausalLM`` with fused experts) and lm-eval 0.4.x.
"""

from selectmoe.demo.build import build_demo, build_demo_target, pool_records
from selectmoe.demo.world import DATASETS, EVAL_TASKS, NOISE_KINDS, SPECIAL_TOKENS

__all__ = [
    "DATASETS",
    "EVAL_TASKS",
    "NOISE_KINDS",
    "SPECIAL_TOKENS",
    "build_demo",
    "build_demo_target",
    "pool_records",
]
