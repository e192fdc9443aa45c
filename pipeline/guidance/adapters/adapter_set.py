"""All adapters of one base model, the shared w embedding, and the hooks that apply them.

Each adapter wraps one attention module of the frozen base and adds its output to that module's
output (a forward hook, so the base's code is untouched). The last layer of every adapter starts at
zero: before training the model with adapters *is* the base model.

Inputs shared by all adapters of a model: w (random Fourier features on its natural scale, then MLP
and LayerNorm: layers.GuidanceEmbedding), the base's own timestep embedding and its condition tokens
(class embedding or prompt tokens). The adapters run fused (layers.py): what (w, c) decide once per
sample run (`context`), the t-token's part once per pass (`begin`), the rest in the blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.backends.family import split_negative
from pipeline.guidance import rules
from pipeline.guidance.adapters import saved
from pipeline.guidance.adapters.cross_attention import CrossAttentionAdapter
from pipeline.guidance.adapters.layers import Fixed, GuidanceEmbedding, Stacks
from pipeline.guidance.adapters.offset import OffsetAdapter
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends.family import Family

ARCHITECTURES = {"offset": OffsetAdapter, "cross_attention": CrossAttentionAdapter}


def _key(module_name: str) -> str:
    return module_name.replace(".", "__")


def _output_dim(module: nn.Module) -> int:
    """Width of an attention module's output (diffusers Attention: to_out[0])."""
    to_out = getattr(module, "to_out", None)
    if to_out is not None:
        return to_out[0].out_features
    raise AGDError(type(module).__name__, "adapter target is not a diffusers Attention module",
                   "fix the backend's adapter_targets patterns")


class AdapterSet(nn.Module):
    """All adapters of one base model, the shared w embedding, and the hooks that apply them."""

    def __init__(self, family: Family, architecture: str = "cross_attention", width: int = 16, heads: int = 2,
                 fourier_features: int = 32, seed: int = 0, mlp: int = 0, w_gate: bool = False,
                 negatives: bool = False):
        super().__init__()
        self.config = {"architecture": architecture, "width": width, "heads": heads,
                       "fourier_features": fourier_features, "seed": seed, "mlp": mlp, "w_gate": w_gate}
        if negatives:  # recorded only when set: adapter files without negatives stay as they were
            self.config["negatives"] = True
        # negatives: the adapters also read a negative condition (the negative class or prompt; the null
        # condition when a sample has none), the unconditional branch of the CFG they learn
        self.negatives = negatives
        # w_gate (ours): every adapter's output is multiplied by (w - 1). CFG's correction is
        # (w - 1) (cond - uncond): with the gate the adapters learn the direction once for all w
        # instead of a size that grows fivefold across the training range through a LayerNorm'd
        # embedding; at w = 1 the model is exactly the base. (The frozen blocks after an adapter
        # are not linear, so the adapters still see w and correct the size where they must.)
        self.w_gate = w_gate
        # the teacher rule the adapters learn (fit sets it from the store): sampling runs the adapters
        # where that rule guides, and the conditional pass alone where it does not (the interval)
        self.teacher: rules.Rule = rules.PLAIN
        torch.manual_seed(seed)
        t_dim, c_dim = family.embedding_dims
        self.targets = [name for name, _ in family.adapter_targets()]
        modules = dict(family.adapter_targets())
        w_dim = 4 * width
        self.guidance = GuidanceEmbedding(fourier_features, w_dim, seed=seed)
        self.architecture = ARCHITECTURES[architecture]
        self.adapters = nn.ModuleDict({
            _key(name): self.architecture(_output_dim(modules[name]), width, w_dim, t_dim, c_dim, heads, mlp)
            for name in self.targets
        })
        if negatives:  # after every other layer: the rest starts as a set without negatives would
            for adapter in self.adapters.values():
                adapter.add_negative(c_dim)
        self.base_identity = family.identity()
        self._family = family  # for the half-precision fingerprints `save` records
        self.base_parameters = family.num_parameters()
        # fused: the grouped, once-per-pass path (layers.py); False runs each adapter's own forward in
        # its block, the reference the fused path is tested against
        self.fused = True
        self.stacks = Stacks(self.adapters, self.architecture.stack)
        self._step = None  # the adapters' inputs for the pass in progress (None: adapters off)
        self._compiled_pass = None
        self._handles = []

    # --- applying the adapters -------------------------------------------------------------
    def attach(self, family: Family) -> "AdapterSet":
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
                in_block, ctx = self._step[key]
                return in_block(ctx, hidden, output)
            w_emb, t_emb, c_tokens, n_tokens, gate = self._step["reference"]
            delta = self.adapters[key](hidden.to(w_emb.dtype), w_emb, t_emb, c_tokens, n_tokens)
            if gate is not None:
                delta = delta * gate.view(-1, *([1] * (delta.dim() - 1)))
            return output + delta.to(output.dtype)
        return hook

    def context(self, family: Family, cond: dict, w: torch.Tensor, stacks: dict | None = None) -> Fixed:
        """What the adapters compute from the condition (its negative) and w alone: once per sample run."""
        own, negative = split_negative(cond)
        if negative is not None and not self.negatives:
            raise AGDError("adapters.json: negatives", "these adapters were trained without negative conditions, so "
                           "they cannot apply one (their CFG's unconditional branch was always the null "
                           "condition)", "sample without a negative, use CFG (two passes) for it, or train "
                           "adapters with conditions.negative_share > 0")
        with torch.no_grad():
            c_tokens = family.adapter_condition(own)
            n_tokens = family.adapter_condition(family.unconditional(cond)) if self.negatives else None
        w = w.to(family.device)
        w_emb = self.guidance(w)
        gate = (w - 1).to(w_emb.dtype) if self.w_gate else None
        return self.architecture.prepare(stacks or self.stacks.get(), w_emb, c_tokens.to(w_emb.dtype), gate,
                                         len(self.targets), None if n_tokens is None else n_tokens.to(w_emb.dtype))

    def begin(self, family: Family, fixed: Fixed, t: torch.Tensor, stacks: dict | None = None) -> None:
        """Arm the hooks for the denoiser's next pass at timesteps t (B,); `release` disarms them.
        For callers that run the denoiser themselves (the diffusers integration); `step` does both."""
        if self.fused:
            t_emb = family.adapter_time(t).detach().to(fixed.reference[0].dtype)
            self._step = self.architecture.per_step(fixed, t_emb, stacks or self.stacks.get(),
                                                    list(self.adapters.keys()), list(self.adapters.values()))
            return
        with torch.no_grad():
            t_emb = family.adapter_time(t)
        w_emb, c_tokens, n_tokens = fixed.reference
        self._step = {"reference": (w_emb, t_emb.to(w_emb.dtype), c_tokens, n_tokens, fixed.gate)}

    def step(self, family: Family, fixed: Fixed, x, t, cond, stacks: dict | None = None) -> torch.Tensor:
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

    def _fused_pass(self, family: Family, fixed, stacks, x, t, cond) -> torch.Tensor:
        self.begin(family, fixed, t, stacks)
        return self._forward(family, x, t, cond)

    def _forward(self, family: Family, x, t, cond) -> torch.Tensor:
        try:
            return family.forward(x, t, cond)
        finally:
            if not torch.is_grad_enabled():
                self._step = None

    def forward(self, family: Family, x, t, cond, w) -> torch.Tensor:
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
        """The adapter folder (saved.py): weights, then metadata, each written atomically."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {**self.config, "targets": self.targets, "teacher": self.teacher.identity(),
                "base": {**self.base_identity, "fingerprints": self._family.precision_fingerprints()},
                **self.summary()}
        saved.write(Path(out_dir), state, meta)

    @classmethod
    def load(cls, path: Path, family: Family) -> "AdapterSet":
        """Adapters saved by `save`, attached to family; refused when made for another base."""
        path = Path(path)
        meta = saved.read_meta(path)
        config = saved.config(path, meta)
        saved.check_base(path, meta, family.fingerprint, family.fingerprint_dtype, family.identity(),
                         family.fingerprint_as)
        saved.check_targets(path, meta, [name for name, _ in family.adapter_targets()])
        state = saved.read_weights(path, meta)
        adapters = cls(family, **config)
        adapters.teacher = saved.teacher(path, meta)
        try:
            adapters.load_state_dict(state)
        except RuntimeError as err:
            fields = ", ".join(f"{k} {config[k]}" for k in ("architecture", "width", "mlp", "fourier_features",
                                                               "negatives"))
            raise AGDError(str(path / saved.WEIGHTS), f"its weights do not fit {saved.META}'s {fields} "
                           f"({str(err).splitlines()[0][:100]})", saved.RETRAIN) from None
        return adapters.attach(family)
