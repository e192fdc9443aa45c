"""Guidance adapters (Perez Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance
using Adapters", TMLR 2025).

Each adapter wraps one attention module of the frozen base and adds its output to that module's
output (a forward hook, so the base's code is untouched). The last layer of every adapter starts
at zero: before training the model with adapters *is* the base model.

Inputs shared by all adapters of a model:
- w: random Fourier features of the guidance scale on its natural scale, then MLP + LayerNorm;
- the base's own timestep embedding and condition tokens (class embedding or prompt tokens).
Everything computed from them alone runs once per pass for all adapters together, and what depends
on (w, c) alone once per sample run (pipeline.adapter_fusion); the modules' own `forward` is the
per-block reference that path is tested against.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import adapter_fusion
from pipeline.errors import AGDError

FORMAT_VERSION = 1


class GuidanceEmbedding(nn.Module):
    """w -> cos(2 pi (f w + p)) with fixed random f, p -> MLP -> LayerNorm."""

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


def _zero(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class OffsetAdapter(nn.Module):
    """(w, t, c) embeddings -> one vector per sample, added to every token. The cheapest form."""

    def __init__(self, dim: int, width: int, w_dim: int, t_dim: int, c_dim: int, heads: int = 1, mlp: int = 0):
        super().__init__()
        self.w_proj, self.t_proj, self.c_proj = nn.Linear(w_dim, width), nn.Linear(t_dim, width), nn.Linear(c_dim, width)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), _zero(nn.Linear(width, dim)))

    def forward(self, hidden, w_emb, t_emb, c_tokens):
        h = self.w_proj(w_emb) + self.t_proj(t_emb) + self.c_proj(c_tokens.mean(dim=1))
        return self.mlp(h).unsqueeze(1)


class CrossAttentionAdapter(nn.Module):
    """The wrapped module's input tokens attend to [w-token, t-token, condition token(s)].

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
        self.to_out = _zero(nn.Linear(hidden_units, dim))

    def forward(self, hidden, w_emb, t_emb, c_tokens):
        kv = torch.cat([self.w_proj(w_emb)[:, None], self.t_proj(t_emb)[:, None], self.c_proj(c_tokens)], dim=1)
        kv = self.norm_kv(kv)
        b, n, _ = hidden.shape

        def split(x):  # (B, L, width) -> (B, heads, L, width / heads)
            return x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(hidden)), split(self.to_k(kv)), split(self.to_v(kv))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        if self.mlp:
            attn = F.silu(self.to_h(hidden) + self.from_attn(attn))
        return self.to_out(attn)


ARCHITECTURES = {"offset": OffsetAdapter, "cross_attention": CrossAttentionAdapter}


def _key(module_name: str) -> str:
    return module_name.replace(".", "__")


class AdapterSet(nn.Module):
    """All adapters of one base model, the shared w embedding, and the hooks that apply them."""

    def __init__(self, family, architecture: str = "cross_attention", width: int = 16, heads: int = 2,
                 fourier_features: int = 32, seed: int = 0, mlp: int = 0, w_gate: bool = False):
        super().__init__()
        self.config = {"architecture": architecture, "width": width, "heads": heads,
                       "fourier_features": fourier_features, "seed": seed, "mlp": mlp, "w_gate": w_gate}
        # w_gate (ours): every adapter's output is multiplied by (w - 1). CFG's correction is
        # (w - 1) (cond - uncond): with the gate the adapters learn the direction once for all w
        # instead of a size that grows fivefold across the training range through a LayerNorm'd
        # embedding; at w = 1 the model is exactly the base. (The frozen blocks after an adapter
        # are not linear, so the adapters still see w and correct the size where they must.)
        self.w_gate = w_gate
        torch.manual_seed(seed)
        t_dim, c_dim = family.embedding_dims
        self.targets = [name for name, _ in family.adapter_targets()]
        modules = dict(family.adapter_targets())
        w_dim = 4 * width
        self.guidance = GuidanceEmbedding(fourier_features, w_dim, seed=seed)
        cls = ARCHITECTURES[architecture]
        self.adapters = nn.ModuleDict({
            _key(name): cls(_output_dim(modules[name]), width, w_dim, t_dim, c_dim, heads, mlp) for name in self.targets
        })
        self.base_identity = family.identity()
        self._family = family  # for the half-precision fingerprints `save` records
        self.base_parameters = family.num_parameters()
        # fused: the grouped, once-per-pass path (pipeline.adapter_fusion); False runs each adapter's
        # own forward in its block, the reference the fused path is tested against
        self.fused = True
        self.stacks = adapter_fusion.Stacks(self)
        self._step = None  # the adapters' inputs for the pass in progress (None: adapters off)
        self._compiled_pass = None
        self._handles = []

    # --- applying the adapters -------------------------------------------------------------
    def attach(self, family) -> "AdapterSet":
        self.detach()
        modules = dict(family.denoiser.named_modules())
        for name in self.targets:
            self._handles.append(modules[name].register_forward_hook(self._hook(_key(name)), with_kwargs=True))
        self.to(family.device)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, key: str):
        def hook(module, args, kwargs, output):
            if self._step is None:  # the plain base (e.g. the CFG teacher): adapters off
                return output
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.fused:
                return adapter_fusion.apply(*self._step[key], hidden, output)
            w_emb, t_emb, c_tokens, gate = self._step["reference"]
            delta = self.adapters[key](hidden.to(w_emb.dtype), w_emb, t_emb, c_tokens)
            if gate is not None:
                delta = delta * gate.view(-1, *([1] * (delta.dim() - 1)))
            return output + delta.to(output.dtype)
        return hook

    def context(self, family, cond: dict, w: torch.Tensor, stacks: dict | None = None) -> adapter_fusion.Fixed:
        """What the adapters compute from the condition and w alone: once per sample run."""
        with torch.no_grad():
            c_tokens = family.adapter_condition(cond)
        return adapter_fusion.prepare(self, w.to(family.device), c_tokens, stacks or self.stacks.get())

    def begin(self, family, fixed: adapter_fusion.Fixed, t: torch.Tensor, stacks: dict | None = None) -> None:
        """Arm the hooks for the denoiser's next pass at timesteps t (B,); `release` disarms them.
        For callers that run the denoiser themselves (the diffusers integration); `step` does both."""
        if self.fused:
            self._step = adapter_fusion.per_step(self, fixed, family.adapter_time(t).detach(),
                                                 stacks or self.stacks.get())
            return
        with torch.no_grad():
            t_emb = family.adapter_time(t)
        w_emb, c_tokens = fixed.reference
        self._step = {"reference": (w_emb, t_emb.to(w_emb.dtype), c_tokens, fixed.gate)}

    def step(self, family, fixed: adapter_fusion.Fixed, x, t, cond, stacks: dict | None = None) -> torch.Tensor:
        """One pass of the base with the adapters, given `context`'s result for these samples.
        `stacks`: the stacked parameters, when the caller already has them (a training pass)."""
        if not self.fused:
            self.begin(family, fixed, t)
            return self._forward(family, x, t, cond)
        stacks = stacks or self.stacks.get()
        if family.compiled and not torch.is_grad_enabled():
            # the whole pass as one graph (the t-token's part, every block, every adapter): its
            # guards check the inputs, not every adapter's per-pass tensors the hooks read
            if self._compiled_pass is None:
                self._compiled_pass = torch.compile(self._fused_pass, dynamic=False, mode=family.compile_mode)
            try:
                return self._compiled_pass(family, fixed, stacks, x, t, cond)
            finally:
                self._step = None
        return self._fused_pass(family, fixed, stacks, x, t, cond)

    def _fused_pass(self, family, fixed, stacks, x, t, cond) -> torch.Tensor:
        self.begin(family, fixed, t, stacks)
        return self._forward(family, x, t, cond)

    def _forward(self, family, x, t, cond) -> torch.Tensor:
        try:
            return family.forward(x, t, cond)
        finally:
            if not torch.is_grad_enabled():
                self._step = None

    def forward(self, family, x, t, cond, w) -> torch.Tensor:
        """One pass of the base with adapters at guidance scale w: AGD's replacement for CFG."""
        stacks = self.stacks.get()  # rebuilt on every call while training: once per pass, not twice
        return self.step(family, self.context(family, cond, w, stacks), x, t, cond, stacks)

    def release(self) -> None:
        """Drop the per-pass inputs (kept during training so checkpointed blocks can recompute)."""
        self._step = None

    # --- size, saving, loading -------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> dict:
        n = self.num_parameters()
        return {"parameters": n, "base_parameters": self.base_parameters,
                "percent_of_base": round(100.0 * n / self.base_parameters, 4), "modules": len(self.targets)}

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(out_dir / "adapters.safetensors"))
        meta = {"format_version": FORMAT_VERSION, **self.config, "targets": self.targets,
                "base": {**self.base_identity, "fingerprints": self._family.precision_fingerprints()},
                **self.summary()}
        (out_dir / "adapters.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, family) -> "AdapterSet":
        """Load adapters saved by `save`, refusing files made for another base."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        meta_file, weights = path / "adapters.json", path / "adapters.safetensors"
        meta = read_meta(path)
        try:
            config = {k: meta[k] for k in ("architecture", "width", "heads", "fourier_features", "seed")}
            # files from before the content path and the gate have neither
            config.update(mlp=int(meta.get("mlp", 0)), w_gate=bool(meta.get("w_gate", False)))
        except (KeyError, TypeError, ValueError):
            raise AGDError(str(meta_file), "not an adapter config", "re-run `agd train` to write it again") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise AGDError(str(meta_file), f"adapter format {meta.get('format_version')} is not {FORMAT_VERSION}",
                           "re-train the adapters with this version")
        base = meta.get("base", {})
        dtype = family.fingerprint_dtype
        recorded = base.get("fingerprint") if dtype == "float32" else base.get("fingerprints", {}).get(dtype)
        if recorded is None:
            raise AGDError(str(meta_file), f"records no fingerprint of the base in {dtype} (written before "
                           "adapter files recorded half-precision fingerprints)",
                           "load the base in float32, or re-save the adapters with this version (`agd train`)")
        if recorded != family.fingerprint:
            shown = {k: v for k, v in base.items() if k != "fingerprints"}
            raise AGDError(str(meta_file), f"made for base {shown}, not {family.identity()} ({dtype} weights)",
                           "load the base model these adapters were trained on, or re-train them")
        adapters = cls(family, **config)
        try:
            state = load_file(str(weights))
            adapters.load_state_dict(state)
        except (SafetensorError, RuntimeError, OSError) as err:
            raise AGDError(str(weights), f"unreadable or wrong shapes ({str(err).splitlines()[0][:120]})",
                           "re-run `agd train` to write it again") from None
        return adapters.attach(family)


def read_meta(path: Path) -> dict:
    """adapters.json of an adapter folder, refused unless both of its files are there and it is a JSON object."""
    meta_file = Path(path) / "adapters.json"
    for f in (meta_file, Path(path) / "adapters.safetensors"):
        if not f.exists():
            raise AGDError(str(f), "not found", "run `agd train` (dvc repro) or point at a folder from `agd train`")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise AGDError(str(meta_file), "not an adapter config", "re-run `agd train` to write it again")
    return meta


def _output_dim(module: nn.Module) -> int:
    """Width of an attention module's output (diffusers Attention: to_out[0])."""
    to_out = getattr(module, "to_out", None)
    if to_out is not None:
        return to_out[0].out_features
    raise AGDError(type(module).__name__, "adapter target is not a diffusers Attention module",
                   "fix the backend's adapter_targets patterns")
