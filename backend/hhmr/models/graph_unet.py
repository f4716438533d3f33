"""GraphUNet: a U-shaped graph network over the mesh hierarchy that predicts x0.

Per level: Chebyshev graph-convolution residual blocks conditioned on the timestep, and at the
coarser levels self-attention among vertices and cross-attention to the condition tokens;
downsampling and upsampling through the hierarchy's fixed operators, with skip connections.
Inside, features are vertex-first [N, B, C], the layout of the sparse graph operators, so no
block transposes; only the input and output are batch-first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from hhmr.mesh.hierarchy import MeshHierarchy
from hhmr.models.conditions import ConditionEncoder, Conditions
from hhmr.models.graph_ops import ChebConv, Resample


@dataclass
class GraphUNetConfig:
    channels: tuple[int, ...] = (32, 64, 128, 128)  # per hierarchy level
    attention_levels: tuple[int, ...] = (2, 3)  # levels with self- and cross-attention
    token_dim: int = 128
    heads: int = 4
    cheb_k: int = 2
    time_dim: int = 128
    num_patches: int = 16
    image_dim: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphUNetConfig:
        d = dict(d)
        for k in ("channels", "attention_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class ResBlock(nn.Module):
    def __init__(self, c: int, edges, n: int, time_dim: int, k: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.conv1 = ChebConv(c, c, edges, n, k)
        self.film = nn.Linear(time_dim, 2 * c)
        self.norm2 = nn.LayerNorm(c)
        self.conv2 = ChebConv(c, c, edges, n, k)
        nn.init.zeros_(self.conv2.linear.weight)
        nn.init.zeros_(self.conv2.linear.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(temb)[None].chunk(2, -1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(nn.functional.silu(h))


class Attention(nn.Module):
    """Multi-head attention on vertex-first features, with nn.MultiheadAttention's parameter
    names (so its state dicts load); the keys and values of fixed tokens can be projected
    once with `keys_values` and reused at every sampling step."""

    def __init__(self, c: int, heads: int, kdim: int | None = None) -> None:
        super().__init__()
        self.heads, self.c = heads, c
        kdim = kdim or c
        self.shared = kdim == c
        if self.shared:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * c, c))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(c, c))
            self.k_proj_weight = nn.Parameter(torch.empty(c, kdim))
            self.v_proj_weight = nn.Parameter(torch.empty(c, kdim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = nn.Linear(c, c)
        for w in ((self.in_proj_weight,) if self.shared else
                  (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.out_proj.bias)

    def _weight(self, i: int) -> torch.Tensor:
        if self.shared:
            return self.in_proj_weight[i * self.c:(i + 1) * self.c]
        return (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[i]

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[N, B, C] -> [B, heads, N, C / heads]"""
        n, b, _ = x.shape
        return x.reshape(n, b, self.heads, -1).permute(1, 2, 0, 3)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values [B, heads, T, C / heads] of tokens [T, B, kdim]."""
        bias = self.in_proj_bias.chunk(3)
        return (self._split(nn.functional.linear(tokens, self._weight(1), bias[1])),
                self._split(nn.functional.linear(tokens, self._weight(2), bias[2])))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Attend from x [N, B, C] to kv (self-attention when None)."""
        n, b, c = x.shape
        if kv is None and self.shared:
            qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.reshape(n, b, 3, self.heads, -1).permute(2, 1, 3, 0, 4)
        else:
            k, v = kv if kv is not None else self.keys_values(x)
            q = self._split(nn.functional.linear(x, self._weight(0), self.in_proj_bias[:c]))
        o = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, heads, N, C / heads]
        return self.out_proj(o.permute(2, 0, 1, 3).reshape(n, b, c))


class AttentionBlock(nn.Module):
    """Self-attention over vertices, cross-attention to condition tokens, feed-forward
    (vertex-first [N, B, C]; the tokens' keys and values from `Attention.keys_values`)."""

    def __init__(self, c: int, token_dim: int, heads: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(c)
        self.self_attn = Attention(c, heads)
        self.norm_cross = nn.LayerNorm(c)
        self.cross_attn = Attention(c, heads, kdim=token_dim)
        self.norm_ff = nn.LayerNorm(c)
        self.ff = nn.Sequential(nn.Linear(c, 2 * c), nn.SiLU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.norm_self(x))
        x = x + self.cross_attn(self.norm_cross(x), kv)
        return x + self.ff(self.norm_ff(x))


@dataclass
class Context:
    """What the conditions contribute to every step: the keys and values of the condition
    tokens for each attention block (compute once per sampling run with `context`)."""

    batch: int
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # per level; None: no attention


class Level(nn.Module):
    def __init__(self, c: int, edges, n: int, cfg: GraphUNetConfig, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(c, edges, n, cfg.time_dim, cfg.cheb_k)
        self.attn = AttentionBlock(c, cfg.token_dim, cfg.heads) if attention else None

    def forward(self, x, temb, kv):
        x = self.res(x, temb)
        return self.attn(x, kv) if self.attn is not None else x


class GraphUNet(nn.Module):
    """x0 = GraphUNet(x_t [B, V, 3], t [B], Conditions) in model units."""

    def __init__(self, hierarchy: MeshHierarchy, cfg: GraphUNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or GraphUNetConfig()
        if len(cfg.channels) != hierarchy.num_levels:
            raise ValueError(f"{len(cfg.channels)} channel sizes for "
                             f"{hierarchy.num_levels} hierarchy levels")
        self.cfg = cfg
        self.num_vertices = hierarchy.sizes[0]
        ch, sizes = cfg.channels, hierarchy.sizes
        self.conditions = ConditionEncoder(cfg.token_dim, cfg.num_patches, cfg.image_dim)
        self.time = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(),
                                  nn.Linear(cfg.time_dim, cfg.time_dim))
        self.inp = nn.Linear(3, ch[0])
        self.vertex_embedding = nn.ParameterList(
            [nn.Parameter(torch.randn(n, c) * 0.02) for n, c in zip(sizes, ch, strict=True)])
        levels = range(hierarchy.num_levels)
        attn = set(cfg.attention_levels)
        self.down_blocks = nn.ModuleList(
            [Level(ch[i], hierarchy.edges[i], sizes[i], cfg, i in attn) for i in levels])
        self.downsample = nn.ModuleList([Resample(d) for d in hierarchy.down])
        self.down_proj = nn.ModuleList(
            [nn.Linear(ch[i], ch[i + 1]) for i in range(hierarchy.num_levels - 1)])
        self.mid = Level(ch[-1], hierarchy.edges[-1], sizes[-1], cfg, True)
        self.upsample = nn.ModuleList([Resample(u) for u in hierarchy.up])
        self.up_proj = nn.ModuleList(
            [nn.Linear(ch[i + 1], ch[i]) for i in range(hierarchy.num_levels - 1)])
        self.merge = nn.ModuleList(
            [nn.Linear(2 * ch[i], ch[i]) for i in range(hierarchy.num_levels - 1)])
        self.up_blocks = nn.ModuleList(
            [Level(ch[i], hierarchy.edges[i], sizes[i], cfg, i in attn)
             for i in range(hierarchy.num_levels - 1)])
        self.out_norm = nn.LayerNorm(ch[0])
        self.out = nn.Linear(ch[0], 3)

    def _levels(self) -> list[Level]:
        """Every level in the order forward runs them."""
        return [*self.down_blocks, self.mid, *reversed(self.up_blocks)]

    def context(self, cond: Conditions | None, batch: int) -> Context:
        """Condition tokens projected to each attention block's keys and values."""
        tokens = self.conditions(cond or Conditions(), batch).transpose(0, 1)
        return Context(batch, [lv.attn.cross_attn.keys_values(tokens) if lv.attn else None
                               for lv in self._levels()])

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: Conditions | Context | None = None) -> torch.Tensor:
        b = x_t.shape[0]
        if x_t.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"x_t must be [B, {self.num_vertices}, 3]")
        ctx = cond if isinstance(cond, Context) else self.context(cond, b)
        if ctx.batch != b:
            raise ValueError(f"context for batch {ctx.batch}, x_t has batch {b}")
        kv = iter(ctx.kv)
        temb = self.time(timestep_embedding(t.reshape(-1).expand(b), self.cfg.time_dim))
        h = self.inp(x_t.transpose(0, 1)) + self.vertex_embedding[0][:, None]
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, temb, next(kv))
            if i < len(self.downsample):
                skips.append(h)
                h = self.down_proj[i](self.downsample[i](h))
                h = h + self.vertex_embedding[i + 1][:, None]
        h = self.mid(h, temb, next(kv))
        for i in reversed(range(len(self.upsample))):
            h = self.up_proj[i](self.upsample[i](h))
            h = self.merge[i](torch.cat([h, skips[i]], -1))
            h = self.up_blocks[i](h, temb, next(kv))
        return self.out(nn.functional.silu(self.out_norm(h))).transpose(0, 1)
