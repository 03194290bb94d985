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
  depend on the batch size. Generating it is the cost: ``P x d`` random draws per batch once the
  matrix is too large to keep: 30x the matmul's time on this CPU (``benchmarks/projection.py``).
* :class:`SparseSignProjection`: a sparse Johnson-Lindenstrauss projection (Kane and Nelson,
  2014): every parameter goes to :data:`SPARSE_NONZEROS` output coordinates with random signs,
  chosen by seeded universal hash functions of its index. Nothing is stored or drawn: a block's
  coordinates are a few integer operations per parameter, and projecting is a scatter-add of
  ``s x P`` values instead of a ``2 P d`` matmul. The same for every batch, run and device.
  ``targeted.less.projection`` chooses between them (``rademacher``, the default, as LESS).
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
    "PROJECTIONS",
    "PROJECTION_BLOCK_ROWS",
    "SPARSE_NONZEROS",
    "RademacherProjection",
    "SparseSignProjection",
    "adam_update_direction",
    "flat_moments",
    "per_example_gradients",
]

#: Rows of the projection generated at a time: its memory is ``rows x d x 4`` bytes.
PROJECTION_BLOCK_ROWS = 65_536
#: LESS's (and torch's AdamW default) betas and epsilon for the Adam-normalised gradient.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class _BlockProjection:
    """A projection ``[n_params] -> [dim]`` applied block by block of
    :data:`PROJECTION_BLOCK_ROWS` parameters (subclasses add one block's contribution)."""

    n_params: int
    dim: int

    def _add_block(self, out: torch.Tensor, part: torch.Tensor, index: int) -> None:
        raise NotImplementedError

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
            self._add_block(out, part, index)
        return out


class RademacherProjection(_BlockProjection):
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

    def _add_block(self, out: torch.Tensor, part: torch.Tensor, index: int) -> None:
        out += part @ self.block(index, part.device)


#: Output coordinates per parameter of :class:`SparseSignProjection`.
SPARSE_NONZEROS = 4
#: A prime above every parameter index the hash functions see (Mersenne 2^61 - 1 would overflow
#: int64 products; 2^31 - 1 keeps ``a * index`` below 2^62 for indices below 2^31).
_HASH_PRIME = 2**31 - 1


class SparseSignProjection(_BlockProjection):
    """Seeded sparse sign projection ``[n_params] -> [dim]``: parameter ``j`` adds
    ``sign_k(j) / sqrt(s) * x_j`` to output ``bucket_k(j)`` for ``k < s`` (``s`` =
    :data:`SPARSE_NONZEROS`).

    ``bucket_k(j) = ((a_k j + b_k) mod p) mod d`` and ``sign_k(j) = 2 (((c_k j + e_k) mod p)
    mod 2) - 1`` with ``p = 2^31 - 1`` and ``a_k, b_k, c_k, e_k`` drawn from the seed: pairwise
    independent hash functions, so that projected inner products are unbiased with variance
    comparable to a dense projection's of the same ``d``. Nothing is generated per batch.

    Parameters
    ----------
    n_params : int
        Length of the vectors to project (P), below 2^31.
    dim : int
        Projected dimension (d).
    seed : int
    """

    def __init__(self, n_params: int, dim: int, seed: int) -> None:
        if n_params < 1 or dim < 1 or seed < 0 or n_params >= _HASH_PRIME:
            raise ValueError(f"bad projection: n_params={n_params}, dim={dim}, seed={seed}")
        self.n_params, self.dim, self.seed = int(n_params), int(dim), int(seed)
        draws = np.random.default_rng([self.seed, 0x5A5E]).integers(
            1, _HASH_PRIME, size=(4, SPARSE_NONZEROS)
        )
        self._coefficients = torch.as_tensor(draws, dtype=torch.int64)  # rows a, b, c, e

    def describe(self, device_type: str) -> str:
        """What makes two projections the same (the device does not matter: integer hashing)."""
        return (
            f"sparse_sign(P={self.n_params}, d={self.dim}, seed={self.seed}, "
            f"s={SPARSE_NONZEROS}, block={PROJECTION_BLOCK_ROWS})"
        )

    def block(self, index: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets ``[s, rows]`` (int64) and signed weights ``[s, rows]`` (float32) of the
        parameters ``[index * R, (index + 1) * R)``."""
        start = index * PROJECTION_BLOCK_ROWS
        rows = min(PROJECTION_BLOCK_ROWS, self.n_params - start)
        j = torch.arange(start, start + rows, device=device, dtype=torch.int64)
        a, b, c, e = (row.to(device)[:, None] for row in self._coefficients)
        buckets = ((a * j + b) % _HASH_PRIME) % self.dim
        signs = (((c * j + e) % _HASH_PRIME) % 2).to(torch.float32) * 2 - 1
        return buckets, signs / SPARSE_NONZEROS**0.5

    def _add_block(self, out: torch.Tensor, part: torch.Tensor, index: int) -> None:
        buckets, weights = self.block(index, part.device)
        for k in range(SPARSE_NONZEROS):
            out.index_add_(1, buckets[k], part * weights[k])


#: ``targeted.less.projection`` -> the projection class.
PROJECTIONS = {"rademacher": RademacherProjection, "sparse": SparseSignProjection}


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
