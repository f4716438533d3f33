"""Gather-based graph operators: sparse interpolation and Chebyshev graph convolution."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def padded_rows(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [R, K], weights [R, K]) of a sparse-ish dense matrix's non-zeros per row."""
    nz = [np.nonzero(row)[0] for row in matrix]
    k = max(1, max(len(x) for x in nz))
    idx = np.zeros((len(matrix), k), dtype=np.int64)
    w = np.zeros((len(matrix), k), dtype=np.float32)
    for r, cols in enumerate(nz):
        idx[r, : len(cols)] = cols
        w[r, : len(cols)] = matrix[r, cols]
    return torch.from_numpy(idx), torch.from_numpy(w)


def to_sparse(idx: torch.Tensor, w: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Sparse COO matrix [R, n_cols] from padded rows (zero weights dropped)."""
    rows = torch.arange(idx.shape[0])[:, None].expand_as(idx)
    keep = w != 0
    ind = torch.stack([rows[keep], idx[keep]])
    return torch.sparse_coo_tensor(ind, w[keep], (idx.shape[0], n_cols),
                                   check_invariants=True).coalesce()


def sparse_apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y[b] = m @ x[b] for a sparse m [R, N] and x [B, N, C] -> [B, R, C]."""
    b, n, c = x.shape
    y = torch.sparse.mm(m, x.transpose(0, 1).reshape(n, b * c).to(m.dtype))
    return y.reshape(m.shape[0], b, c).transpose(0, 1).to(x.dtype)


class Resample(nn.Module):
    """Fixed sparse interpolation (down- or upsampling between hierarchy levels)."""

    def __init__(self, matrix: np.ndarray) -> None:
        super().__init__()
        idx, w = padded_rows(matrix)
        self.register_buffer("m", to_sparse(idx, w, matrix.shape[1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_apply(self.m, x)


def neighbour_table(edges: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled Laplacian L - I = -D^-1/2 A D^-1/2 as padded neighbour rows."""
    adj = np.zeros((n, n), dtype=np.float32)
    adj[edges[:, 0], edges[:, 1]] = 1
    adj[edges[:, 1], edges[:, 0]] = 1
    deg = adj.sum(1)
    norm = -adj / np.sqrt(np.outer(deg, deg)).clip(min=1e-8)
    return padded_rows(norm)


class ChebConv(nn.Module):
    """Chebyshev graph convolution of order K on a fixed graph (ChebNet, as in COMA)."""

    def __init__(self, c_in: int, c_out: int, edges: np.ndarray, n: int, k: int = 3) -> None:
        super().__init__()
        idx, w = neighbour_table(edges, n)
        self.register_buffer("lap", to_sparse(idx, w, n), persistent=False)
        self.k = k
        self.linear = nn.Linear(c_in * k, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        flat = x.transpose(0, 1).reshape(n, b * c)  # Chebyshev recursion in [N, B*C] layout
        terms = [flat]
        if self.k > 1:
            terms.append(torch.sparse.mm(self.lap, flat))
        for _ in range(2, self.k):
            terms.append(2 * torch.sparse.mm(self.lap, terms[-1]) - terms[-2])
        stacked = torch.stack(terms, -1).reshape(n, b, c * self.k).transpose(0, 1)
        return self.linear(stacked)
