"""The paper path rehearsed offline (``config/rehearsal.yaml``, ``scripts/rehearse.sh``).

Every rule of the paper's DAG runs on CPU without network, with the paper's code paths: tiny
random-weight checkpoints of the paper's architectures and file layouts
(:mod:`~selectmoe.rehearsal.models`), their kinds of tokenizer (SentencePiece for Llama-2, Qwen's
real vocabulary; :mod:`~selectmoe.rehearsal.tokenizers`), a LESS archive of the real layout
unpacked by the workflow's fetch rules (:mod:`~selectmoe.rehearsal.archive`), and lm-eval's own
definitions of the six paper tasks with their datasets served offline
(:mod:`selectmoe.rehearsal.offline_plugin`, a workflow plugin).
"""

from selectmoe.rehearsal.build import MANIFEST, build_rehearsal

__all__ = ["MANIFEST", "build_rehearsal"]
