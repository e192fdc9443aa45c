"""The cross-attention adapter (the paper's main form): the wrapped module's input tokens attend to
[w-token, t-token, condition token(s)]; and its fused form.

Fused (see layers.py): the keys and values of the w and condition tokens are computed once per sample
run and the t-token's once per pass, for all adapters with grouped products; in the block only the
queries, the attention over the few adapter tokens, the content path and the output projection run.
Two exact rewrites make that in-block part cheap when the adapter tokens are few (class-conditional
models: J = 3 tokens, w, t and the class):
- *folding*: the attention's result is a softmax-weighted sum of value vectors, and the next layer
  (`to_out`, or `from_attn` with the content path) is linear, so it is applied to the J value
  vectors of each head once per pass (U = W_h v_hj + b / heads; the softmax weights of each head
  sum to one, which carries the bias). In the block the layer becomes one (N, heads * J) x
  (heads * J, E) product. Used when heads * J <= width, where it is cheaper; text models' 77
  prompt tokens keep the plain attention.
- the query projection folds into the keys the same way: scores = h (W_q^T K) + b_q K, one
  (N, dim) x (dim, J * heads) product per block, with no reshuffling of heads.
- without the content path, the (w - 1) gate and the addition to the module's output fold in too:
  the whole adapter is `baddbmm(output, P, g U)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.guidance.adapters.layers import Fixed, add, stack, stack_token_projections, tokens, zero


class CrossAttentionAdapter(nn.Module):
    """The wrapped module's input tokens attend to [w-token, t-token, condition token(s)], and, in a
    set trained with negative conditions, the negative condition's token(s) after them.

    With `mlp` > 0 (ours, not the paper's) the attention result does not go straight to the output:
    it shifts a hidden layer of `mlp * width` units computed from each token's own features,
    `to_out(silu(to_h(hidden) + from_attn(attention)))`. The paper's adapter can only mix three
    value vectors per head, the same for every token of an image; CFG's correction depends on the
    image content, and on a small base there are few frozen blocks after each adapter to supply it.
    """

    def __init__(self, dim: int, width: int, w_dim: int, t_dim: int, c_dim: int, heads: int = 2, mlp: int = 0):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, width)
        self.w_proj, self.t_proj, self.c_proj = nn.Linear(w_dim, width), nn.Linear(t_dim, width), nn.Linear(c_dim, width)
        self.norm_kv = nn.LayerNorm(width)
        self.to_k, self.to_v = nn.Linear(width, width), nn.Linear(width, width)
        hidden_units = mlp * width or width
        if mlp:
            self.to_h, self.from_attn = nn.Linear(dim, hidden_units), nn.Linear(width, hidden_units)
        self.mlp = mlp
        self.to_out = zero(nn.Linear(hidden_units, dim))

    def add_negative(self, c_dim: int) -> None:
        """The negative condition's tokens as more keys and values, through their own projection (the
        adapter must tell the condition from the negative). Added after every other layer of the set
        (AdapterSet), so the rest starts as a set without negatives of the same seed does."""
        self.n_proj = nn.Linear(c_dim, self.w_proj.out_features)

    def forward(self, hidden, w_emb, t_emb, c_tokens, n_tokens=None):
        """The per-block reference: every step, in the block."""
        parts = [self.w_proj(w_emb)[:, None], self.t_proj(t_emb)[:, None], self.c_proj(c_tokens)]
        kv = torch.cat(parts + ([self.n_proj(n_tokens)] if n_tokens is not None else []), dim=1)
        kv = self.norm_kv(kv)
        b, n, _ = hidden.shape

        def split(x):  # (B, L, width) -> (B, heads, L, width / heads)
            return x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(hidden)), split(self.to_k(kv)), split(self.to_v(kv))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        if self.mlp:
            attn = F.silu(self.to_h(hidden) + self.from_attn(attn))
        return self.to_out(attn)

    # --- fused: once per pass, for all adapters (layers.py) -----------------------------------------
    @staticmethod
    def stack(mods: list["CrossAttentionAdapter"]) -> dict:
        s = stack_token_projections(mods)
        s["norm"] = (stack(m.norm_kv.weight for m in mods), stack(m.norm_kv.bias for m in mods))
        s["kv"] = (stack(torch.cat([m.to_k.weight, m.to_v.weight]) for m in mods),  # (A, 2 width, width)
                   stack(torch.cat([m.to_k.bias, m.to_v.bias]) for m in mods))
        # the queries and the content path's input layer read the same hidden states: one matmul
        s["qh"] = [(torch.cat([m.to_q.weight, m.to_h.weight]), torch.cat([m.to_q.bias, m.to_h.bias]))
                   if m.mlp else (m.to_q.weight, m.to_q.bias) for m in mods]
        fold = [m.from_attn if m.mlp else m.to_out for m in mods]
        if len({f.weight.shape for f in fold}) == 1 and len({m.to_q.weight.shape for m in mods}) == 1:
            s["fold"] = (stack(f.weight for f in fold), stack(f.bias for f in fold))  # (A, E, width)
            s["q"] = (stack(m.to_q.weight for m in mods), stack(m.to_q.bias for m in mods))
        return s

    @staticmethod
    def prepare(s: dict, w_emb: torch.Tensor, c_tokens: torch.Tensor, gate, a: int,
                n_tokens: torch.Tensor | None = None) -> Fixed:
        """Keys and values of the w, condition (and negative) tokens of every adapter, once per sample run."""
        parts = [tokens(s, "w_proj", w_emb, a)[:, None], tokens(s, "c_proj", c_tokens, a)]
        if n_tokens is not None:
            parts.append(tokens(s, "n_proj", n_tokens, a))
        return Fixed(gate, _keys_values(s, torch.cat(parts, dim=1)), None, (w_emb, c_tokens, n_tokens))

    @staticmethod
    def per_step(fixed: Fixed, t_emb: torch.Tensor, s: dict, keys: list[str],
                 mods: list["CrossAttentionAdapter"]) -> dict:
        """Every adapter's in-block work for one pass: key -> (function, its context)."""
        a, gate = len(keys), fixed.gate
        kv = torch.cat([fixed.kv, _keys_values(s, tokens(s, "t_proj", t_emb, a)[:, None])], dim=1)  # (B, J, A, 2W)
        b, j, _, two_w = kv.shape
        heads = mods[0].heads
        d = two_w // 2 // heads
        k, v = kv.view(b, j, a, 2, heads, d).unbind(3)  # (B, J, A, H, d) each
        g3 = None if gate is None else gate.view(-1, 1, 1)
        out = {}
        if "fold" in s and heads * j <= two_w // 2:
            # scores = q k^T with q = W_q h + b_q: fold the query projection into the keys, (dim, J H) per
            # sample, so the block computes its scores with one product and no reshuffling of heads
            w_q, b_q = s["q"]  # (A, width, dim), (A, width)
            k = k * d ** -0.5
            # columns ordered (token, head): the softmax then runs over a middle axis of the scores,
            # which torch vectorises across heads (over a last axis of 3 it is four times slower)
            w_qk = torch.einsum("ahdc,bjahd->abcjh", w_q.view(a, heads, d, -1), k).flatten(3)  # (A, B, dim, J H)
            b_qk = torch.einsum("ahd,bjahd->abjh", b_q.view(a, heads, d), k).flatten(2)[:, :, None]  # (A, B, 1, J H)
            weight, bias = s["fold"]  # (A, E, width)
            e = weight.shape[1]
            u = torch.einsum("bjahd,aehd->abjhe", v, weight.view(a, e, heads, d)) + (bias / heads)[:, None, None, None]
            if not mods[0].mlp and gate is not None:
                u = u * gate.view(1, -1, 1, 1, 1)
            u = u.reshape(a, b, j * heads, e)
            for i, (key, m) in enumerate(zip(keys, mods)):
                out[key] = (_folded, (w_qk[i], b_qk[i], u[i], m, g3))
            return out
        k, v = k.permute(2, 0, 3, 1, 4), v.permute(2, 0, 3, 1, 4)  # (A, B, H, J, d)
        for i, (key, m) in enumerate(zip(keys, mods)):
            out[key] = (_attend, (s["qh"][i], k[i], v[i], m, g3))
        return out


def _keys_values(s: dict, adapter_tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm and the K/V projection of adapter tokens (B, J, A, width) -> (B, J, A, 2 width)."""
    gamma, beta = s["norm"]
    normed = F.layer_norm(adapter_tokens, adapter_tokens.shape[-1:]) * gamma + beta
    weight, bias = s["kv"]
    return torch.einsum("bjaw,aew->bjae", normed, weight) + bias


def _folded(ctx: tuple, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """In the block, folded values and queries: scores, softmax, one product (plus the content path)."""
    w_qk, b_qk, u, m, g3 = ctx
    hidden = hidden.to(u.dtype)
    b, n, _ = hidden.shape
    scores = torch.baddbmm(b_qk, hidden, w_qk).view(b, n, -1, m.heads)  # (B, N, J, H)
    p = torch.softmax(scores, dim=2).view(b, n, -1)
    if not m.mlp:  # gate and bias are in U: the whole adapter is one batched product
        return torch.baddbmm(output, p, u) if output.dtype == p.dtype else output + (p @ u).to(output.dtype)
    return add(output, m.to_out(F.silu(torch.baddbmm(m.to_h(hidden), p, u))), g3)


def _attend(ctx: tuple, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """In the block, attention over hoisted keys and values (many condition tokens: text models)."""
    (qh_w, qh_b), keys, values, m, g3 = ctx
    hidden = hidden.to(values.dtype)
    b, n, _ = hidden.shape
    width, heads = m.to_q.out_features, m.heads
    qh = F.linear(hidden, qh_w, qh_b)
    q = qh[..., :width].view(b, n, heads, -1).transpose(1, 2)  # (B, H, N, d)
    attn = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).reshape(b, n, width)
    if not m.mlp:
        return add(output, m.to_out(attn), g3)
    return add(output, m.to_out(F.silu(qh[..., width:] + m.from_attn(attn))), g3)
