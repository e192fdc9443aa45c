"""Adapter work once per pass, for all adapters together, instead of once per block.

Everything an adapter computes from (w, t, c) alone does not depend on the hidden states: the w
embedding, the projections of the w-, t- and condition tokens, their LayerNorm, and the keys and
values of every cross-attention adapter (the whole output of an offset adapter). `prepare` computes
it for all adapters with grouped matrix products, once per sample run for what depends on (w, c)
alone, and `per_step` adds the t-token's part once per pass. Only what needs the hidden states
stays in the blocks (`apply`): the queries, the attention over the few adapter tokens, the content
path and the output projection.

Two exact rewrites make the in-block part cheap when the adapter tokens are few (class-conditional
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
The parameters are the adapters' own (saved files are unchanged): this module only stacks them,
and caches the stacks while they do not change and no gradient is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Fixed:
    """What depends on (w, c) alone: computed once per sample run (or per training batch)."""

    gate: torch.Tensor | None  # (B,) w - 1, or None without the gate
    kv: torch.Tensor | None  # cross-attention: (B, 1 + L, A, 2 * width) keys and values of the w and c tokens
    offset: torch.Tensor | None  # offset: (B, A, width) w and condition parts of the first layer
    reference: tuple  # (w_emb, c_tokens): the per-block reference path's inputs (AdapterSet.fused = False)


def _stack(tensors) -> torch.Tensor:
    return torch.stack(list(tensors))


class Stacks:
    """The adapters' parameters stacked along a leading adapter axis (rebuilt only when they change)."""

    def __init__(self, adapter_set):
        self.set = adapter_set
        self._key, self._cache = None, None

    def get(self) -> dict:
        params = list(self.set.adapters.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._build()  # training: the stacks must carry the gradient to each adapter
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key:
            self._key, self._cache = key, self._build()
        return self._cache

    def _build(self) -> dict:
        mods = list(self.set.adapters.values())
        s = {name: (_stack(getattr(m, name).weight for m in mods).flatten(0, 1),
                    _stack(getattr(m, name).bias for m in mods).flatten(0, 1))
             for name in ("w_proj", "t_proj", "c_proj")}  # (A * width, in): one matmul for all adapters
        first = mods[0]
        if isinstance(first, _cross_attention()):
            s["norm"] = (_stack(m.norm_kv.weight for m in mods), _stack(m.norm_kv.bias for m in mods))
            s["kv"] = (_stack(torch.cat([m.to_k.weight, m.to_v.weight]) for m in mods),  # (A, 2 width, width)
                       _stack(torch.cat([m.to_k.bias, m.to_v.bias]) for m in mods))
            # the queries and the content path's input layer read the same hidden states: one matmul
            s["qh"] = [(torch.cat([m.to_q.weight, m.to_h.weight]), torch.cat([m.to_q.bias, m.to_h.bias]))
                       if m.mlp else (m.to_q.weight, m.to_q.bias) for m in mods]
            fold = [m.from_attn if m.mlp else m.to_out for m in mods]
            if len({f.weight.shape for f in fold}) == 1 and len({m.to_q.weight.shape for m in mods}) == 1:
                s["fold"] = (_stack(f.weight for f in fold), _stack(f.bias for f in fold))  # (A, E, width)
                s["q"] = (_stack(m.to_q.weight for m in mods), _stack(m.to_q.bias for m in mods))
        else:
            s["mid"] = (_stack(m.mlp[1].weight for m in mods), _stack(m.mlp[1].bias for m in mods))
        return s


def _cross_attention():
    from pipeline.adapters import CrossAttentionAdapter

    return CrossAttentionAdapter


def _tokens(s: dict, name: str, x: torch.Tensor, a: int) -> torch.Tensor:
    """One projection (w, t or c) for all adapters: (..., in) -> (..., A, width)."""
    out = F.linear(x, *s[name])
    return out.view(*out.shape[:-1], a, -1)


def _keys_values(s: dict, tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm and the K/V projection of adapter tokens (B, J, A, width) -> (B, J, A, 2 width)."""
    gamma, beta = s["norm"]
    normed = F.layer_norm(tokens, tokens.shape[-1:]) * gamma + beta
    weight, bias = s["kv"]
    return torch.einsum("bjaw,aew->bjae", normed, weight) + bias


def prepare(adapter_set, w: torch.Tensor, c_tokens: torch.Tensor, s: dict) -> Fixed:
    """What depends on (w, c) alone; `s`: the stacked parameters (Stacks.get)."""
    w_emb = adapter_set.guidance(w)
    c_tokens = c_tokens.to(w_emb.dtype)
    a = len(adapter_set.targets)
    gate = (w - 1).to(w_emb.dtype) if adapter_set.w_gate else None
    if "kv" in s:
        tokens = torch.cat([_tokens(s, "w_proj", w_emb, a)[:, None], _tokens(s, "c_proj", c_tokens, a)], dim=1)
        return Fixed(gate, _keys_values(s, tokens), None, (w_emb, c_tokens))
    offset = _tokens(s, "w_proj", w_emb, a) + _tokens(s, "c_proj", c_tokens.mean(dim=1), a)
    return Fixed(gate, None, offset, (w_emb, c_tokens))


def per_step(adapter_set, fixed: Fixed, t_emb: torch.Tensor, s: dict) -> dict:
    """Every adapter's inputs for one pass: key -> what `apply` needs in that adapter's block.
    `s`: the stacked parameters (Stacks.get)."""
    t_emb = t_emb.to(fixed.reference[0].dtype)
    keys = list(adapter_set.adapters.keys())
    mods = list(adapter_set.adapters.values())
    a = len(keys)
    gate = fixed.gate
    if fixed.offset is not None:  # the whole offset adapter: (B, dim) per adapter, added to every token
        h = F.silu(fixed.offset + _tokens(s, "t_proj", t_emb, a))
        h = F.silu(torch.einsum("baw,aew->bae", h, s["mid"][0]) + s["mid"][1])
        out = {}
        for i, (key, m) in enumerate(zip(keys, mods)):
            delta = m.mlp[3](h[:, i])
            out[key] = ("offset", ((delta if gate is None else delta * gate[:, None])[:, None],))
        return out
    kv = torch.cat([fixed.kv, _keys_values(s, _tokens(s, "t_proj", t_emb, a)[:, None])], dim=1)  # (B, J, A, 2W)
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
            out[key] = ("fold", (w_qk[i], b_qk[i], u[i], m, g3))
        return out
    k, v = k.permute(2, 0, 3, 1, 4), v.permute(2, 0, 3, 1, 4)  # (A, B, H, J, d)
    for i, (key, m) in enumerate(zip(keys, mods)):
        out[key] = ("attend", (s["qh"][i], k[i], v[i], m, g3))
    return out


def apply(kind: str, ctx, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """One adapter in its block: the module's output plus the (gated) adapter output."""
    if kind == "offset":
        return _add(output, ctx[0], None)
    if kind == "fold":
        w_qk, b_qk, u, m, g3 = ctx
        hidden = hidden.to(u.dtype)
        b, n, _ = hidden.shape
        scores = torch.baddbmm(b_qk, hidden, w_qk).view(b, n, -1, m.heads)  # (B, N, J, H)
        p = torch.softmax(scores, dim=2).view(b, n, -1)
        if not m.mlp:  # gate and bias are in U: the whole adapter is one batched product
            return torch.baddbmm(output, p, u) if output.dtype == p.dtype else output + (p @ u).to(output.dtype)
        return _add(output, m.to_out(F.silu(torch.baddbmm(m.to_h(hidden), p, u))), g3)
    (qh_w, qh_b), keys, values, m, g3 = ctx
    hidden = hidden.to(values.dtype)
    b, n, _ = hidden.shape
    width, heads = m.to_q.out_features, m.heads
    qh = F.linear(hidden, qh_w, qh_b)
    q = qh[..., :width].view(b, n, heads, -1).transpose(1, 2)  # (B, H, N, d)
    attn = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).reshape(b, n, width)
    if not m.mlp:
        return _add(output, m.to_out(attn), g3)
    return _add(output, m.to_out(F.silu(qh[..., width:] + m.from_attn(attn))), g3)


def _add(output: torch.Tensor, delta: torch.Tensor, g3: torch.Tensor | None) -> torch.Tensor:
    if output.dtype != delta.dtype:  # a half-precision base with float32 adapters
        return output + (delta if g3 is None else delta * g3).to(output.dtype)
    return output + delta if g3 is None else torch.addcmul(output, delta, g3)
