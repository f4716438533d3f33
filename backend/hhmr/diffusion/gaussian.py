"""The exact denoiser of Gaussian data: the linear least-squares estimate of x0 from x_t.

For data with mean mu and covariance U diag(lam) U^T, and x_t = sqrt(ab) x0 + sqrt(1 - ab) e,
E[x0 | x_t] = mu + U diag(sqrt(ab) lam / (ab lam + 1 - ab)) U^T (x_t - sqrt(ab) mu) when the
data are Gaussian, and for any data it is the best linear estimate, whose squared error per
direction is lam (1 - ab) / (ab lam + 1 - ab) whatever the distribution. Kept to the `rank`
leading directions plus one variance for all the others (the mean of their eigenvalues).
Independent of any network; `tools/widening.py` samples with it at high noise.
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianDenoiser(nn.Module):
    """Linear x0 estimate from x_t [B, ..., D-flattened] for a fitted mean and covariance."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        if not 0 < rank <= dim:
            raise ValueError(f"rank must be in [1, {dim}]")
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(dim, rank))  # orthonormal columns
        self.register_buffer("eigvals", torch.zeros(rank))
        self.register_buffer("rest", torch.zeros(()))  # variance of every other direction

    @torch.no_grad()
    def fit(self, samples: torch.Tensor) -> GaussianDenoiser:
        """Set mean and covariance from samples [N, ...] (flattened to [N, D])."""
        x = samples.reshape(len(samples), -1).double()
        dim, rank = self.basis.shape
        if x.shape[1] != dim:
            raise ValueError(f"samples have {x.shape[1]} values each, the denoiser {dim}")
        mean = x.mean(0)
        cov = torch.cov((x - mean).T)
        lam, vecs = torch.linalg.eigh(cov)  # ascending
        lam = lam.clamp_min(0).flip(0)
        self.mean.copy_(mean)
        self.basis.copy_(vecs.flip(1)[:, :rank])
        self.eigvals.copy_(lam[:rank])
        self.rest.fill_(float(lam[rank:].mean()) if rank < dim else 0.0)
        return self

    def _gain(self, lam: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        return ab.sqrt() * lam / (ab * lam + 1 - ab)

    def forward(self, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] under the Gaussian, for x_t [B, ...] and alpha_bar ab [B]."""
        shape, b = x_t.shape, x_t.shape[0]
        ab = ab.reshape(b, 1).to(x_t.dtype)
        d = x_t.reshape(b, -1) - ab.sqrt() * self.mean
        coeff = d @ self.basis  # [B, K]
        along = (coeff * self._gain(self.eigvals, ab)) @ self.basis.T
        other = self._gain(self.rest, ab) * (d - coeff @ self.basis.T)
        return (self.mean + along + other).reshape(shape)

    def error_rms(self, ab: torch.Tensor) -> torch.Tensor:
        """Root mean squared error per value of the estimate at alpha_bar ab [B] -> [B]."""
        ab = ab.reshape(-1, 1)
        dim, rank = self.basis.shape

        def err(lam: torch.Tensor) -> torch.Tensor:
            return lam * (1 - ab) / (ab * lam + 1 - ab)

        total = err(self.eigvals).sum(1) + (dim - rank) * err(self.rest).reshape(-1)
        return (total / dim).sqrt()
