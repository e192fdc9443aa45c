"""What every adapter architecture shares: the w embedding, zero-initialised output layers, and the
pieces of the once-per-pass ("fused") path that work on all adapters of a model at once.

The fused path. Everything an adapter computes from (w, t, c) alone does not depend on the hidden
states: the w embedding, the projections of the w-, t- and condition tokens, their LayerNorm, and the
keys and values of every cross-attention adapter (the whole output of an offset adapter). So each
architecture computes it for all adapters with grouped matrix products: once per sample run for
what depends on (w, c) (`prepare`), once per pass for the t-token's part (`per_step`). Only what
needs the hidden states stays in the blocks (`apply`). The parameters are the adapters' own (saved
files do not change): the fused path only stacks them along a leading adapter axis (`Stacks`),
cached while they do not change and no gradient is wanted. Each architecture's `forward` is the
per-block reference that path is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class GuidanceEmbedding(nn.Module):
    """w -> cos(2 pi (f w + p)) with fixed random f, p -> MLP -> LayerNorm. w stays on its natural scale,
    so unseen values between training values interpolate smoothly."""

    def __init__(self, num_features: int, dim: int, seed: int = 0, freq_std: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(num_features, generator=g) * freq_std)
        self.register_buffer("phases", torch.rand(num_features, generator=g))
        self.mlp = nn.Sequential(nn.Linear(num_features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        features = torch.cos(2 * math.pi * (w.float()[:, None] * self.freqs + self.phases))
        return self.norm(self.mlp(features))


def zero(linear: nn.Linear) -> nn.Linear:
    """An output layer that starts at zero: before training the model with adapters is the base."""
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


@dataclass
class Fixed:
    """What depends on (w, c) alone: computed once per sample run (or per training batch)."""

    gate: torch.Tensor | None  # (B,) w - 1, or None without the gate
    kv: torch.Tensor | None  # cross-attention: (B, 1 + L (+ L), A, 2 * width) keys and values of w, c (and n) tokens
    offset: torch.Tensor | None  # offset: (B, A, width) w and condition parts of the first layer
    reference: tuple  # (w_emb, c_tokens, n_tokens or None): the per-block reference path's inputs (fused = False)


# One adapter's work in its block: (context, the module's input tokens, the module's output) -> output.
InBlock = Callable[[tuple, torch.Tensor, torch.Tensor], torch.Tensor]


def stack(tensors) -> torch.Tensor:
    return torch.stack(list(tensors))


def stack_token_projections(mods) -> dict:
    """The w-, t-, c- (and negative) token projections of every adapter as one matrix each: (A * width, in)."""
    names = ("w_proj", "t_proj", "c_proj") + (("n_proj",) if hasattr(mods[0], "n_proj") else ())
    return {name: (stack(getattr(m, name).weight for m in mods).flatten(0, 1),
                   stack(getattr(m, name).bias for m in mods).flatten(0, 1))
            for name in names}


def tokens(s: dict, name: str, x: torch.Tensor, a: int) -> torch.Tensor:
    """One projection (w, t, c or n) for all adapters: (..., in) -> (..., A, width)."""
    out = F.linear(x, *s[name])
    return out.view(*out.shape[:-1], a, -1)


def add(output: torch.Tensor, delta: torch.Tensor, g3: torch.Tensor | None) -> torch.Tensor:
    """The module's output plus an adapter's (gated) output, in the output's dtype."""
    if output.dtype != delta.dtype:  # a half-precision base with float32 adapters
        return output + (delta if g3 is None else delta * g3).to(output.dtype)
    return output + delta if g3 is None else torch.addcmul(output, delta, g3)


class Stacks:
    """An adapter set's parameters stacked by its architecture's `stack` (rebuilt only when they change)."""

    def __init__(self, adapters: nn.ModuleDict, build: Callable[[list], dict]):
        self.adapters, self.build = adapters, build
        self._key, self._cache = None, None

    def get(self) -> dict:
        params = list(self.adapters.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self.build(list(self.adapters.values()))  # training: the stacks carry the gradient
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key:
            self._key, self._cache = key, self.build(list(self.adapters.values()))
        return self._cache
