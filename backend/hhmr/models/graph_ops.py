"""Gather-based graph operators: sparse interpolation and Chebyshev graph convolution."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


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


class _FixedSparseMatmul(torch.autograd.Function):
    """m @ x for a constant sparse CSR m; the backward m^T @ grad stays sparse (autograd's
    own backward of a sparse product goes through a dense matrix)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, mt: torch.Tensor) -> torch.Tensor:
        ctx.mt = mt
        return m @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.mt @ grad, None, None


def sparse_pair(coo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sparse matrix and its transpose, both CSR (the fast layout for m @ dense)."""
    return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


def sparse_matmul(m: torch.Tensor, mt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m @ x for a fixed sparse m [R, N] (with its transpose mt) and a dense x [N, C]."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return m @ x  # a plain operation, so that traces without gradients can be frozen
    return _FixedSparseMatmul.apply(x, m, mt)


def sparse_apply(m: torch.Tensor, mt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m @ x for a sparse m [R, N] and vertex-first features x [N, B, C] -> [R, B, C]."""
    n, b, c = x.shape
    y = sparse_matmul(m, mt, x.reshape(n, b * c).to(m.dtype))
    return y.reshape(m.shape[0], b, c).to(x.dtype)


class Resample(nn.Module):
    """Fixed sparse interpolation (down- or upsampling between hierarchy levels)."""

    def __init__(self, matrix: np.ndarray) -> None:
        super().__init__()
        idx, w = padded_rows(matrix)
        m, mt = sparse_pair(to_sparse(idx, w, matrix.shape[1]))
        self.register_buffer("m", m, persistent=False)
        self.register_buffer("mt", mt, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_apply(self.m, self.mt, x)


def neighbour_table(edges: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled Laplacian L - I = -D^-1/2 A D^-1/2 as padded neighbour rows."""
    adj = np.zeros((n, n), dtype=np.float32)
    adj[edges[:, 0], edges[:, 1]] = 1
    adj[edges[:, 1], edges[:, 0]] = 1
    deg = adj.sum(1)
    norm = -adj / np.sqrt(np.outer(deg, deg)).clip(min=1e-8)
    return padded_rows(norm)


class ChebConv(nn.Module):
    """Chebyshev graph convolution of order K on a fixed graph (ChebNet, as in COMA), on
    vertex-first features [N, B, C]: sum_k T_k(L) x W_k, one small GEMM per term."""

    def __init__(self, c_in: int, c_out: int, edges: np.ndarray, n: int, k: int = 3) -> None:
        super().__init__()
        idx, w = neighbour_table(edges, n)
        lap, lap_t = sparse_pair(to_sparse(idx, w, n))
        self.register_buffer("lap", lap, persistent=False)
        self.register_buffer("lap_t", lap_t, persistent=False)
        self.k = k
        self.linear = nn.Linear(c_in * k, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b, c = x.shape
        # Chebyshev recursion in [N, B*C] layout, in the Laplacian's dtype (autocast-proof);
        # the weight's input columns interleave the terms (c_in major, term minor)
        flat = x.reshape(n, b * c).to(self.lap.dtype)
        w = self.linear.weight
        out = nn.functional.linear(x, w[:, 0:: self.k], self.linear.bias)
        prev, cur = None, flat
        for j in range(1, self.k):
            nxt = sparse_matmul(self.lap, self.lap_t, cur)
            if prev is not None:
                nxt = 2 * nxt - prev
            prev, cur = cur, nxt
            out = out + nn.functional.linear(cur.reshape(n, b, c).to(x.dtype), w[:, j:: self.k])
        return out
