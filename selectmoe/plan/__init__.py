"""GPU memory and time of every stage at paper scale, computed from the model shapes.

``selectmoe plan --configfile config/paper.yaml`` prints the table; :func:`plan_table` returns it.
Everything here is arithmetic on the models' ``config.json`` values and the workflow config; no
model is loaded and no GPU is needed. The numbers are **estimates**: the memory model counts the
tensors the stage's code keeps alive at its peak, the time model counts matmul FLOPs and divides
by an assumed sustained throughput. Every assumption is a named field of :class:`Assumptions`.

Parameter counts (:class:`ModelShape`)
    Exact for the supported architectures (OLMoE / Select-MoE, Llama, Qwen2, Qwen3): the tests
    compare them with ``sum(p.numel())`` of the real transformers modules.

Memory per stage (bytes, then GiB)
    *weights* in the dtype the stage's code loads them in, *trainable* tensors with their
    gradients and AdamW's two float32 moments, *activations* that autograd saves for the backward
    pass (training) or that are live at once (inference), the *logits* of the loss, and a
    fixed CUDA context plus a fragmentation share of the caching allocator. The saved-activation
    formula follows Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
    Transformer Models", §4): list the tensors every layer keeps for the backward pass, per token.
    Here the list is the one of *this* code path (PyTorch SDPA, so no ``T x T`` score matrix;
    frozen weights, so the inputs of frozen linear layers are not kept; RMSNorm upcasts to
    float32), and the tests check it against the tensors autograd really saves on tiny models.

Time per job (seconds)
    ``FLOPs / (peak FLOP/s of the dtype x mfu)`` with the usual ``2 x matmul params`` FLOPs per
    token and forward pass. Training passes cost ``2 N`` (forward) ``+ 2 N`` (gradient with respect
    to the activations, needed wherever a gradient flows, frozen weights included) ``+ 2 N_train``
    (gradients of the trainable weights only): about ``4 N`` instead of the ``6 N`` of full
    training, because the base weights are frozen in both warmup and LoRA finetuning. Gradient
    checkpointing adds one more forward. Token counts come from the pool size, an assumed mean
    example length and the config's ratios, epochs and selection percentages. Token generation
    in evaluation is bound by memory bandwidth and is timed as one read of the weights per step.

Targeted methods (rows only when ``selection.methods`` has them)
    ``rds``: *represent*, one inference pass of the targeted model (``targeted.model`` or the
    first target's) over every pool dataset and the query set. ``less``: *less_warmup*, LoRA
    training as in finetuning on ``targeted.less.warmup_share`` of the pool, and
    *less_gradients*, per-example LoRA gradients at each epoch's checkpoint, randomly projected
    to ``projection_dim`` (``2 P d`` float32 FLOPs per example for ``P`` LoRA parameters).
"""

from selectmoe.plan import memory, shapes, stages, table
from selectmoe.plan.memory import *  # noqa: F403
from selectmoe.plan.shapes import *  # noqa: F403
from selectmoe.plan.stages import *  # noqa: F403
from selectmoe.plan.table import *  # noqa: F403

__all__ = [*memory.__all__, *shapes.__all__, *stages.__all__, *table.__all__]
