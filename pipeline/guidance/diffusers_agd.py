"""AGD inside the diffusers pipelines people already use: one denoiser pass per step instead of CFG's two.

    from diffusers import StableDiffusionPipeline
    from pipeline.guidance.diffusers_agd import enable_agd, disable_agd
    pipe = enable_agd(StableDiffusionPipeline.from_pretrained("stabilityai/stable-diffusion-2-1"), "models/adapters")
    image = pipe("a cat on a red sofa", guidance_scale=7.5).images[0]

How it works. The pipelines build CFG's batch of 2B samples themselves ([cond, null] in DiTPipeline,
[null, cond] in the Stable Diffusion ones) and combine the two halves of the denoiser's output,
null + w (cond - null). With AGD enabled, a hook on the denoiser takes only the conditional half of
every input, runs that one pass with the adapters at the pipeline's guidance scale, and hands the
pipeline that output for both halves: the pipeline's own combination then *is* AGD's output, and
everything else it does (scheduler, steps, generators, num_images_per_prompt, callbacks, output
types, LoRA scales) is untouched. A ControlNet is hooked the same way, so it also runs once.
The cost over a plain conditional pass is two concatenations per step.

Teacher rules (docs/teacher-rules.md): adapters distilled from plain CFG run at every step. Adapters
distilled from the guidance interval run only at the steps whose noise level lies in their band (the
hook reads each step's sigma from the pipeline's scheduler); elsewhere the hook runs the plain
conditional pass, adapters off, as the rule's teacher does. Adapters distilled from rescaled CFG
(Lin et al.) already output the rescaled prediction, so they run where the call's guidance_rescale
equals the phi they learnt (the pipeline's rescaling of an output whose halves are equal leaves it
as it is). Adapters of APG or CFG-Zero* need the rule's own steps: they sample in our loop.

Negative prompts. Adapters trained with negative conditions (conditions.negative_share > 0) read the
negative prompt as an input: the hook hands them the unconditional half of the pipeline's batch (the
negative prompt's embeddings, however the call gave them: negative_prompt, negative_prompt_embeds, or
the pipeline's empty prompt) and still runs one pass, the conditional half's.

What AGD cannot do, and refuses with an error instead of silently doing something else:
- negative prompts with adapters trained without negatives: their CFG's unconditional branch was
  always the empty prompt, and AGD never computes that branch, so any other negative prompt would be
  ignored. `disable_agd(pipe)` runs the pipeline's own CFG with it (two passes). SDXL's negative size
  and crop conditions are refused for every adapter: the adapters' teacher never varied them.
- a guidance_rescale other than the adapters' own (0 for all but rescale adapters): it rescales
  CFG's output by the conditional branch's statistics, which one AGD pass does not have.
With guidance_scale <= 1 the pipelines run the plain conditional model, and so does AGD.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.backends import EMBEDDED, get_spec
from pipeline.backends.family import NEGATIVE
from pipeline.backends.loading import FAMILIES
from pipeline.backends.schedulers import noise_level
from pipeline.guidance import hub, rules
from pipeline.guidance.adapters import AdapterSet, read_meta
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends.family import Family

_STATE = "_agd"  # the pipeline attribute that holds an enabled AGD


def enable_agd(pipe, adapters: str | Path, subfolder: str | None = None, weight_name: str | None = None,
               revision: str | None = None):
    """Make `pipe(...)` run AGD: one denoiser pass per step with the adapters at the call's guidance_scale.
    adapters: a folder from `agd train` / `agd export`, its weights file, or a Hub repository id
    ("org/name", with subfolder, weight_name and revision as diffusers' loaders take them; offline from
    the local cache with HF_HUB_OFFLINE=1). Refuses adapters made for another base. Returns pipe."""
    adapters_dir = hub.resolve(adapters, subfolder, weight_name, revision)
    base = read_meta(adapters_dir).get("base")
    backend = base.get("backend") if isinstance(base, dict) else None
    if not isinstance(backend, str):
        raise AGDError(str(adapters_dir / "adapters.json"), "names no base backend", "re-run `agd train` to write it again")
    spec = get_spec(backend, where=f"{adapters_dir / 'adapters.json'}: base.backend")
    if spec.name == EMBEDDED:
        raise AGDError(str(adapters_dir), f"adapters of the embedded default ({EMBEDDED}: 16x16 pixels, 10 classes), "
                       "which no diffusers pipeline runs", "sample them with `agd sample` or "
                       "pipeline.guidance.generate (our sampling loop)")
    family_cls = FAMILIES[spec.family]
    _check_pipeline(pipe, family_cls, spec.name)
    family = family_cls.from_pipeline(spec, pipe)
    adapters = AdapterSet.load(adapters_dir, family)
    return attach(pipe, family, adapters)


def disable_agd(pipe):
    """Undo `enable_agd`: the pipeline runs its own two-pass CFG again. Returns pipe."""
    state = getattr(pipe, _STATE, None)
    if state is not None:
        state.remove()
        pipe.__class__ = state.pipeline_class
        delattr(pipe, _STATE)
    return pipe


def is_enabled(pipe) -> bool:
    return getattr(pipe, _STATE, None) is not None


def attach(pipe, family: Family, adapters: AdapterSet):
    """enable_agd for a family and adapters already loaded around the pipeline's own denoiser."""
    teacher = adapters.teacher
    pipeline_class = getattr(pipe, _STATE).pipeline_class if is_enabled(pipe) else type(pipe)
    runs_here = isinstance(teacher, (rules.CFG, rules.Interval)) or (
        isinstance(teacher, rules.Rescale) and "guidance_rescale" in inspect.signature(pipeline_class.__call__).parameters)
    if not runs_here:
        # APG's momentum and CFG-Zero*'s zeroed steps are not the pipelines' to run (nor rescaling in a
        # pipeline without guidance_rescale): such adapters sample in our loop, which runs their rule
        raise AGDError("adapters.json: teacher", f"adapters distilled from the {teacher.name} rule, which "
                       f"{pipeline_class.__name__}'s own CFG does not run", "sample them with `agd sample` or "
                       "pipeline.guidance.generate (our sampling loop runs the rule's steps)")
    disable_agd(pipe)
    state = _AGD(pipe, family, adapters)
    setattr(pipe, _STATE, state)
    pipe.__class__ = _agd_class(state.pipeline_class)
    return pipe


def _check_pipeline(pipe, family_cls, backend: str) -> None:
    names = {c.__name__ for c in type(pipe).__mro__}
    if not names & set(family_cls.pipeline_classes):
        raise AGDError(type(pipe).__name__, f"not a pipeline AGD supports for {backend} adapters",
                       f"use {' or '.join(family_cls.pipeline_classes)} (other pipelines may lay out CFG's batch "
                       "differently; they run their own CFG as they are)")


# --- the pipeline's call ----------------------------------------------------------------------
_AGD_CLASSES: dict[type, type] = {}


def _agd_class(cls: type) -> type:
    """A subclass of the pipeline's class whose __call__ records the guidance scale (DiTPipeline keeps
    it nowhere the denoiser's hook could read) and refuses what AGD cannot do. Same name, so
    save_pretrained writes the original class into model_index.json."""
    if cls not in _AGD_CLASSES:
        _AGD_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": _agd_call, "__module__": cls.__module__,
                                                        "__doc__": cls.__doc__})
    return _AGD_CLASSES[cls]


def _agd_call(self, *args, **kwargs):
    state: _AGD = getattr(self, _STATE)
    original = state.pipeline_class.__call__
    arguments = inspect.signature(original).bind(self, *args, **kwargs)
    arguments.apply_defaults()
    w = float(arguments.arguments.get("guidance_scale", 1.0))
    if w > 1:
        _refuse_what_agd_cannot_do(arguments, state.family, state.adapters)
    state.w = w
    try:
        return original(self, *args, **kwargs)
    finally:
        state.w = None
        state.adapters.release()  # a pass an exception cut short must not leave the adapters armed
        state.context = None


# the negative arguments that only change the prompt of CFG's unconditional branch, which adapters
# trained with negatives read (SDXL's negative size and crop conditions are not among them)
NEGATIVE_PROMPT_ARGUMENTS = ("negative_prompt", "negative_prompt_2", "negative_prompt_embeds",
                             "negative_pooled_prompt_embeds")


def _refuse_what_agd_cannot_do(bound: inspect.BoundArguments, family: Family, adapters: AdapterSet) -> None:
    teacher = adapters.teacher
    defaults = {name: p.default for name, p in bound.signature.parameters.items()}
    for name, value in bound.arguments.items():
        default = defaults.get(name)
        if not name.startswith("negative_") or value is None or value is default or (
                not isinstance(value, torch.Tensor) and value == default):
            continue
        if adapters.negatives and name in NEGATIVE_PROMPT_ARGUMENTS:
            continue  # these adapters read the negative prompt (the unconditional half of the batch)
        if name.startswith("negative_prompt") and not name.endswith("embeds") and _empty_prompt(value):
            continue  # the empty prompt is the unconditional branch the adapters were distilled from
        if isinstance(value, torch.Tensor) and family.holds_null(value):
            continue  # the same, as the family's own empty-prompt embeddings (agd sample passes them)
        raise AGDError(f"{name}", "AGD does not compute CFG's unconditional branch, and its adapters were "
                       "distilled with the empty prompt there, so a negative prompt would be ignored",
                       "drop it, or call disable_agd(pipe) to run the pipeline's own CFG with it (two passes "
                       "per step)")
    rescale = float(bound.arguments.get("guidance_rescale", 0.0) or 0.0)
    learnt = teacher.phi if isinstance(teacher, rules.Rescale) else 0.0
    if abs(rescale - learnt) > 1e-6:
        how = f"rescaling phi = {learnt:g}" if learnt else "rescaling"
        raise AGDError("guidance_rescale", f"{rescale:g} needs CFG's conditional branch, which one AGD pass does "
                       f"not compute (the adapters were distilled from CFG with{'out' if not learnt else ''} {how})",
                       f"use guidance_rescale={learnt:g}, or disable_agd(pipe) for CFG with rescaling {rescale:g}")


def _empty_prompt(value) -> bool:
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [None]
    return all(v == "" for v in values)


# --- the denoiser's hooks ---------------------------------------------------------------------
class _AGD:
    """An enabled AGD: the adapters, the hooks on the denoiser (and ControlNet), the call's scale."""

    def __init__(self, pipe, family: Family, adapters: AdapterSet):
        self.pipe, self.family, self.adapters = pipe, family, adapters
        self.pipeline_class = type(pipe)
        self.w: float | None = None  # the guidance scale of the call in progress
        self.context = None  # (key, adapters' context): what w and the condition decide, once per call
        self.conditional_half = 0 if family.spec.cfg_layout == "cond_null" else 1
        self.handles = []
        self._hook(family.denoiser, self._denoiser_inputs)
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is not None:
            self._hook(controlnet, self._controlnet_inputs)

    def _hook(self, module, inputs) -> None:
        signature = inspect.signature(module.forward)
        armed = []

        def pre(mod, args, kwargs):
            if not self._guiding():
                return None
            bound = signature.bind(*args, **kwargs).arguments
            for name, p in signature.parameters.items():  # **kwargs of forward: flatten into the call
                if p.kind is p.VAR_KEYWORD and name in bound:
                    bound.update(bound.pop(name))
            new = inputs(bound)
            if new is None:
                return None
            armed.append(True)
            return (), new

        def post(mod, args, kwargs, output):
            if not armed:
                return None
            armed.clear()
            if mod is self.family.denoiser:
                self.adapters.release()
            return _both_halves(output)

        self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _guiding(self) -> bool:
        """Is the pipeline calling with CFG's doubled batch (SD pipelines also skip it for LCM models)?"""
        return self.w is not None and self.w > 1 and bool(getattr(self.pipe, "do_classifier_free_guidance", True))

    def _half(self, arguments: dict) -> tuple[dict, int]:
        x = next(iter(arguments.values()))  # the first argument: the noisy sample
        n = x.shape[0]
        if n % 2:
            raise AGDError(type(self.pipe).__name__, f"called its denoiser with {n} samples, not CFG's even batch",
                           "this pipeline lays out CFG differently: call disable_agd(pipe)")
        return {k: _take_half(v, n, self.conditional_half) for k, v in arguments.items()}, n // 2

    def _denoiser_inputs(self, arguments: dict) -> dict:
        full = arguments
        arguments, b = self._half(arguments)
        device = self.family.device
        if next(self.adapters.parameters()).device != device:  # pipe.to(...) after enable_agd: follow it
            self.adapters.to(device)
            self.context = None
        t = torch.as_tensor(arguments["timestep"], device=device)
        t = t.expand(b) if t.dim() == 0 else t.reshape(-1).expand(b) if t.numel() == 1 else t
        if not self._rule_guides(t):
            return arguments  # outside the adapters' band: the plain conditional pass, adapters off
        cond = self.family.call_condition(arguments)
        if self.adapters.negatives:  # the unconditional half holds the negative prompt: the adapters read it
            other = {k: _take_half(v, 2 * b, 1 - self.conditional_half) for k, v in full.items()}
            cond = {**cond, **{NEGATIVE + k: v for k, v in self.family.call_condition(other).items()}}
        self.adapters.begin(self.family, self._fixed(cond, b), t)
        return arguments

    def _rule_guides(self, t: torch.Tensor) -> bool:
        """Does the adapters' teacher guide at this step? The interval by the step's noise level (the
        pipeline's scheduler's, as our sampler reads it); the other rules it runs at every step."""
        teacher = self.adapters.teacher
        if not isinstance(teacher, rules.Interval):
            return True
        return teacher.action(-1, noise_level(self.pipe.scheduler, float(t.reshape(-1)[0]))) == rules.GUIDE

    def _controlnet_inputs(self, arguments: dict) -> dict | None:
        if arguments.get("guess_mode"):  # the pipeline already runs it on the conditional half alone
            return None
        return self._half(arguments)[0]

    def _fixed(self, cond: dict, b: int):
        """The adapters' context for this call's conditions at w: computed on the first step, reused
        while the condition tensors are the same (a step callback may replace them)."""
        key = (self.w, tuple((v.data_ptr(), tuple(v.shape), v._version) for v in cond.values()
                             if isinstance(v, torch.Tensor)))
        if self.context is None or self.context[0] != key:
            w = torch.full((b,), self.w, device=self.family.device)
            self.context = (key, self.adapters.context(self.family, cond, w))
        return self.context[1]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.adapters.release()


def _take_half(value, n: int, half: int):
    """The conditional half of every batch-sized tensor in a call's argument (nested in tuples,
    lists and dicts: ControlNet residuals, SDXL's added_cond_kwargs); anything else as it is."""
    if isinstance(value, torch.Tensor):
        if value.dim() and value.shape[0] == n:
            return value[n // 2:] if half else value[: n // 2]
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_take_half(v, n, half) for v in value)
    if isinstance(value, dict):
        return {k: _take_half(v, n, half) for k, v in value.items()}
    return value


def _both_halves(output):
    """The one pass's output in both halves of CFG's batch, in the container it came in."""
    if isinstance(output, torch.Tensor):
        return torch.cat([output, output])
    if isinstance(output, (list, tuple)):
        return type(output)(_both_halves(v) for v in output)
    if isinstance(output, dict):  # diffusers' BaseOutput dataclasses are dicts
        return type(output)(**{k: _both_halves(v) for k, v in output.items()})
    return output
