"""Per-example LoRA gradients and their seeded random projection (LESS's gradient features).

* :func:`per_example_gradients`: the gradient of every example's own mean token loss with respect
  to the LoRA weights, for a whole padded batch at once with ``torch.func`` (``vmap`` over
  ``grad`` of a ``functional_call``). It is exact: with right padding and causal attention, an
  example's real positions never see its padding, so the model runs without an attention mask
  and the padded positions carry no label.
* :func:`adam_update_direction`: LESS's Adam-normalised gradient of a training example, from the
  checkpoint's optimizer moments.
* :class:`RademacherProjection`: a ``[P, d]`` matrix of ``±1/sqrt(d)`` entries (a
  Johnson-Lindenstrauss projection, as TRAK's that LESS uses), generated block by block of
  :data:`PROJECTION_BLOCK_ROWS` rows from ``(seed, block)``, so that it never has to be held
  whole, is the same for every batch and every run on the same kind of device, and does not
  depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from selectmoe.model.losses import causal_lm_loss

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "PROJECTION_BLOCK_ROWS",
    "RademacherProjection",
    "adam_update_direction",
    "flat_moments",
    "per_example_gradients",
]

#: Rows of the projection generated at a time: its memory is ``rows x d x 4`` bytes.
PROJECTION_BLOCK_ROWS = 65_536
#: LESS's (and torch's AdamW default) betas and epsilon for the Adam-normalised gradient.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class RademacherProjection:
    """Seeded random projection ``[n_params] -> [dim]``.

    Parameters
    ----------
    n_params : int
        Length of the vectors to project (P).
    dim : int
        Projected dimension (d).
    seed : int
    """

    def __init__(self, n_params: int, dim: int, seed: int) -> None:
        if n_params < 1 or dim < 1 or seed < 0:
            raise ValueError(f"bad projection: n_params={n_params}, dim={dim}, seed={seed}")
        self.n_params, self.dim, self.seed = int(n_params), int(dim), int(seed)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def describe(self, device_type: str) -> str:
        """What makes two projections the same (compared between pool and query features)."""
        return (
            f"rademacher(P={self.n_params}, d={self.dim}, seed={self.seed}, "
            f"block={PROJECTION_BLOCK_ROWS}, device={device_type})"
        )

    def block(self, index: int, device: torch.device) -> torch.Tensor:
        """Rows ``[index * R, (index + 1) * R)`` of the matrix, float32 ``[rows, d]``."""
        key = (device.type, index)
        if key in self._cache:
            return self._cache[key]
        start = index * PROJECTION_BLOCK_ROWS
        rows = min(PROJECTION_BLOCK_ROWS, self.n_params - start)
        block_seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        generator = torch.Generator(device=device).manual_seed(block_seed)
        signs = torch.randint(
            0, 2, (rows, self.dim), generator=generator, device=device, dtype=torch.int8
        )
        matrix = (signs.to(torch.float32) * 2 - 1) / self.dim**0.5
        # keep the blocks when the whole matrix is small (up to 256 MiB); regenerate otherwise
        if self.n_params * self.dim * 4 <= 256 * 2**20:
            self._cache[key] = matrix
        return matrix

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors`` ``[B, P]`` -> ``[B, d]`` float32."""
        if vectors.ndim != 2 or vectors.shape[1] != self.n_params:
            raise ValueError(
                f"vectors have shape {tuple(vectors.shape)}; expected [B, {self.n_params}]"
            )
        out = torch.zeros(vectors.shape[0], self.dim, dtype=torch.float32, device=vectors.device)
        n_blocks = -(-self.n_params // PROJECTION_BLOCK_ROWS)
        for index in range(n_blocks):
            start = index * PROJECTION_BLOCK_ROWS
            part = vectors[:, start : start + PROJECTION_BLOCK_ROWS].to(torch.float32)
            out += part @ self.block(index, vectors.device)
        return out


def per_example_gradients(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Gradients of each example's mean token loss with respect to ``params``.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM in eval mode (no dropout), called as ``model(input_ids=...)``.
    params : mapping of str to torch.Tensor
        The parameters to differentiate (by ``named_parameters`` name), detached.
    input_ids, labels : torch.Tensor of shape (B, T)
        Right-padded; labels -100 where there is none (padding included).

    Returns
    -------
    torch.Tensor of shape (B, P), float32
        The gradients flattened and concatenated in ``params`` order (zeros for an example
        without a label).
    """

    def loss_of(weights: dict[str, torch.Tensor], ids: torch.Tensor, target: torch.Tensor):
        logits = functional_call(model, weights, args=(), kwargs={"input_ids": ids[None]}).logits
        return causal_lm_loss(logits, target[None], sample_wise=False)

    grads = vmap(grad(loss_of), in_dims=(None, 0, 0))(dict(params), input_ids, labels)
    return torch.cat(
        [grads[name].reshape(input_ids.shape[0], -1).to(torch.float32) for name in params], dim=1
    )


def flat_moments(
    names: Sequence[str],
    exp_avg: Mapping[str, torch.Tensor],
    exp_avg_sq: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's first and second moments of ``names``, flattened in that order (``[P]`` each)."""
    return (
        torch.cat([exp_avg[n].reshape(-1).to(torch.float32) for n in names]),
        torch.cat([exp_avg_sq[n].reshape(-1).to(torch.float32) for n in names]),
    )


def adam_update_direction(
    gradients: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor
) -> torch.Tensor:
    """LESS's Adam-normalised gradient ``[B, P]`` (``obtain_gradients_with_adam``): the next
    moments with this gradient, ``m / sqrt(v + eps)``, without bias correction."""
    beta1, beta2 = ADAM_BETAS
    m = beta1 * exp_avg + (1 - beta1) * gradients
    v = beta2 * exp_avg_sq + (1 - beta2) * gradients**2
    return m / torch.sqrt(v + ADAM_EPS)
