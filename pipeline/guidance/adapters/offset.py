"""The offset adapter (the paper's cheaper form): (w, t, c) -> one vector per sample, added to every
token of the wrapped module's output; and its fused form, where the whole adapter runs once per pass
for all adapters, outside the blocks (it never reads the hidden states)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.guidance.adapters.layers import Fixed, add, stack, stack_token_projections, tokens, zero


class OffsetAdapter(nn.Module):
    """(w, t, c) embeddings -> one vector per sample, added to every token. The cheapest form."""

    def __init__(self, dim: int, width: int, w_dim: int, t_dim: int, c_dim: int, heads: int = 1, mlp: int = 0):
        super().__init__()
        self.w_proj, self.t_proj, self.c_proj = nn.Linear(w_dim, width), nn.Linear(t_dim, width), nn.Linear(c_dim, width)
        # a Sequential (silu, hidden, silu, output) for the saved files' parameter names (mlp.1, mlp.3)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), zero(nn.Linear(width, dim)))

    def add_negative(self, c_dim: int) -> None:
        """The negative condition's (mean) token through its own projection (see CrossAttentionAdapter)."""
        self.n_proj = nn.Linear(c_dim, self.w_proj.out_features)

    @property
    def hidden_layer(self) -> nn.Linear:
        return self.mlp[1]

    @property
    def output_layer(self) -> nn.Linear:
        return self.mlp[3]

    def forward(self, hidden, w_emb, t_emb, c_tokens, n_tokens=None):
        """The per-block reference: every step, in the block."""
        h = self.w_proj(w_emb) + self.t_proj(t_emb) + self.c_proj(c_tokens.mean(dim=1))
        if n_tokens is not None:
            h = h + self.n_proj(n_tokens.mean(dim=1))
        return self.mlp(h).unsqueeze(1)

    # --- fused: once per pass, for all adapters (layers.py) -----------------------------------------
    @staticmethod
    def stack(mods: list["OffsetAdapter"]) -> dict:
        s = stack_token_projections(mods)
        s["mid"] = (stack(m.hidden_layer.weight for m in mods), stack(m.hidden_layer.bias for m in mods))
        return s

    @staticmethod
    def prepare(s: dict, w_emb: torch.Tensor, c_tokens: torch.Tensor, gate, a: int,
                n_tokens: torch.Tensor | None = None) -> Fixed:
        """The w, condition (and negative) parts of the first layer, once per sample run."""
        offset = tokens(s, "w_proj", w_emb, a) + tokens(s, "c_proj", c_tokens.mean(dim=1), a)
        if n_tokens is not None:
            offset = offset + tokens(s, "n_proj", n_tokens.mean(dim=1), a)
        return Fixed(gate, None, offset, (w_emb, c_tokens, n_tokens))

    @staticmethod
    def per_step(fixed: Fixed, t_emb: torch.Tensor, s: dict, keys: list[str], mods: list["OffsetAdapter"]) -> dict:
        """The whole adapter for this pass's t: (B, dim) per adapter, added to every token in its block."""
        gate, a = fixed.gate, len(keys)
        h = F.silu(fixed.offset + tokens(s, "t_proj", t_emb, a))
        h = F.silu(torch.einsum("baw,aew->bae", h, s["mid"][0]) + s["mid"][1])
        out = {}
        for i, (key, m) in enumerate(zip(keys, mods)):  # output widths differ between blocks (UNets)
            delta = m.output_layer(h[:, i])
            out[key] = (_apply, ((delta if gate is None else delta * gate[:, None])[:, None],))
        return out


def _apply(ctx: tuple, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return add(output, ctx[0], None)
