"""Frozen TorchScript traces of the denoiser for sampling without gradients, one per batch
size: the same arithmetic without Python's per-operation overhead, which dominates small
batches on a CPU (an n=1 step dispatches about a thousand small operations). Guided steps,
which differentiate through the net, stay eager: measured on this project's 2-core CPU, a
traced graph's backward was slower than autograd's at n=16."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import nn

from hhmr.models.graph_unet import Context


class _FlatInputs(nn.Module):
    """net(x_t, t, *keys_and_values): a Context's tensors as plain inputs, for tracing."""

    def __init__(self, net: nn.Module, batch: int, present: list[bool]) -> None:
        super().__init__()
        self.net, self.batch, self.present = net, batch, present

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *kv: torch.Tensor) -> torch.Tensor:
        pairs = iter(zip(kv[0::2], kv[1::2], strict=True))
        ctx = Context(self.batch, [next(pairs) if p else None for p in self.present])
        return self.net(x_t, t, ctx)


class TracedDenoiser:
    """Calls `net(x_t, t, context)` without gradients through cached frozen traces, keyed by
    batch size and by which blocks attend to conditions. A frozen trace holds a copy of the
    weights: build a new TracedDenoiser after changing them."""

    def __init__(self, net: nn.Module, max_cached: int = 8) -> None:
        self.net = net
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple, torch.jit.ScriptModule] = OrderedDict()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, context: Context) -> torch.Tensor:
        present = [kv is not None for kv in context.kv]
        flat = [tensor for kv in context.kv if kv is not None for tensor in kv]
        key = (x_t.shape[0], tuple(present), x_t.device, x_t.dtype)
        traced = self._cache.get(key)
        if traced is None:
            traced = self._trace(x_t, t, flat, context.batch, present)
            self._cache[key] = traced
            if len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        with torch.no_grad():
            return traced(x_t, t, *flat)

    def _trace(self, x_t, t, flat, batch, present) -> torch.jit.ScriptModule:
        module = _FlatInputs(self.net, batch, present).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # shape checks become constants: one trace per key
            traced = torch.jit.trace(module, (x_t.detach(), t, *flat), check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
