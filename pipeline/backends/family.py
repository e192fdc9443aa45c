"""The `Family` interface every model family implements, split by concern, and what loading shares.

A family is the frozen base behind six small interfaces, each a class below that a stage can be
typed against:

| interface       | what it answers                                                         |
|-----------------|-------------------------------------------------------------------------|
| `Weights`       | which base this is (fingerprints), where it runs, freezing, compiling   |
| `Conditions`    | conditions file items -> stored arrays -> the denoiser's tensors; null  |
| `Denoising`     | one pass, CFG's two branches, `guide` (the one way to combine them)     |
| `AdapterInputs` | what the adapters read from the frozen base: t and condition embeddings |
| `Pipelines`     | the diffusers pipeline classes the family runs AGD inside               |
| `Images`        | latent shape and decoding to uint8 images                               |

`Family` is all six; dit.py and sd.py hold each family's peculiarities.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends import BackendSpec


Combine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (cond, null, w) -> guided


def cfg(cond: torch.Tensor, null: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, null + w (cond - null), w per sample: the one place it is written."""
    return null + torch.as_tensor(w, device=cond.device).to(cond.dtype).view(-1, *([1] * (cond.dim() - 1))) \
        * (cond - null)


def _base_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under any LoRA that peft injected (unfused): its layers dropped, the wrapped
    layers under their own names. A model with a LoRA loaded is still identified as its base."""
    out = {}
    for name, tensor in module.state_dict().items():
        if ".lora_" in name or "lora_magnitude_vector" in name:
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


HALF_DTYPES = (("float16", torch.float16), ("bfloat16", torch.bfloat16))


def state_fingerprint(module: nn.Module, dtype: torch.dtype | None = None) -> str:
    """Identity of a model's weights: sha256 over names, shapes and bytes of its state dict.
    dtype: of the weights cast to it (floating tensors), as a pipeline loaded in that dtype holds them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_weights(module).items()):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if tensor.is_meta:  # shape-only models (size reports, benchmarks): names and shapes identify them
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]


def check_path(path: str) -> None:
    """A local path must exist; anything else is a hub id, which needs the network."""
    first = path.split("/")[0]
    looks_local = (path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
                   or Path(first).is_dir())  # "models/x": a folder under an existing local directory
    if looks_local and not Path(path).is_dir():
        raise AGDError(f"base.path {path}", "no such model folder",
                       "point base.path at a diffusers save_pretrained folder or a hub id such as "
                       "facebook/DiT-XL-2-256")


def load_error(path: str, err: Exception) -> AGDError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    fix = ("download it where the hub is reachable and set base.path to the local folder" if offline
           else "check the hub id, your network, or point base.path at a local folder")
    return AGDError(f"base.path {path}", f"could not load the model ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:160]})", fix)


class Weights:
    """Which base this is, where it runs, frozen, optionally compiled."""

    spec: BackendSpec
    path: str  # where it was loaded from (a hint for people, not part of its identity)
    denoiser: nn.Module  # the network adapters are injected into
    fingerprint: str  # take_fingerprint
    fingerprint_dtype: str  # the dtype of the weights `fingerprint` hashes
    _half_fingerprints: dict[str, str] | None = None  # convert: of the full-precision weights
    compiled = False
    compile_mode: str | None = None  # torch.compile's mode for every graph of this model (AGD's pass too)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def modules(self) -> list[nn.Module]:
        return [self.denoiser]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def identity(self) -> dict:
        """What adapter files record about the base (the path only as a hint for people)."""
        return {"backend": self.spec.name, "fingerprint": self.fingerprint, "path": self.path}

    def content_identity(self) -> dict:
        """What decides the content of a trajectory store: the weights, not where they lie."""
        return {"backend": self.spec.name, "fingerprint": self.fingerprint}

    def take_fingerprint(self) -> None:
        """Fingerprint the denoiser's weights as they are now, and remember their dtype: full precision
        when `load` converts afterwards, the pipeline's own dtype for `from_pipeline`."""
        self.fingerprint = state_fingerprint(self.denoiser)
        self.fingerprint_dtype = dtype_name(self.dtype)

    def fingerprint_as(self, dtype: str) -> str | None:
        """The fingerprint of the denoiser's weights cast to a dtype ("float16", "bfloat16"), when they
        hold nothing that dtype cannot (a base saved in it and read back wider); else None."""
        target = getattr(torch, dtype)
        for tensor in _base_weights(self.denoiser).values():
            if tensor.is_floating_point() and not tensor.is_meta and \
                    not torch.equal(tensor.to(target).to(tensor.dtype), tensor):
                return None
        return state_fingerprint(self.denoiser, target)

    def precision_fingerprints(self) -> dict[str, str]:
        """The fingerprints of the weights in half precision, which adapter files also record, so a
        diffusers pipeline loaded with torch_dtype=float16 / bfloat16 is recognised as the base."""
        if self.fingerprint_dtype != "float32":
            return {self.fingerprint_dtype: self.fingerprint}
        if self._half_fingerprints is not None:  # taken before `convert` dropped the full precision
            return dict(self._half_fingerprints)
        if self.dtype != torch.float32:  # converted by someone else: the full-precision weights are gone
            return {dtype_name(self.dtype): state_fingerprint(self.denoiser)}
        return {name: state_fingerprint(self.denoiser, dtype) for name, dtype in HALF_DTYPES}

    def convert(self, dtype: torch.dtype, *modules) -> None:
        """The loaded base (and `modules`, e.g. its VAE) in a half dtype, the frozen-base default on GPUs.
        The half fingerprints of every half dtype are taken first, from the full-precision weights: an
        adapter file trained on a bfloat16 base then also names its float16 weights, which the float16
        diffusers pipelines most SD/SDXL users load hold."""
        if dtype == torch.float32:
            return
        if self.fingerprint_dtype == "float32":
            self._half_fingerprints = self.precision_fingerprints()
        for module in (self.denoiser, *modules):
            if module is not None:
                module.to(dtype)

    def freeze(self):
        for module in self.modules():
            module.eval()  # DiT label dropout and any dropout stay off for good
            module.requires_grad_(False)
        return self

    def to(self, device):
        """The denoiser moves now; a VAE follows on its first decode and text encoders load where the
        denoiser is, so a stage that never decodes or encodes holds only the denoiser there."""
        self.denoiser.to(device)
        return self

    def compile(self):
        """torch.compile the denoiser in place, adapter hooks included (sample.compile).

        Fixed shapes (one graph per batch shape, and per adapters on or off: CFG's 2B batch, AGD's B),
        so a stage compiles a few graphs once and reuses them every step. On CUDA the graphs are
        captured as CUDA graphs (mode reduce-overhead): the step's launch cost goes, which is what
        bounds small batches. The sampling loop copies outputs it keeps, as the graph reuses them.
        """
        if not self.compiled:
            import torch._dynamo

            cfg = torch._dynamo.config
            limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
            setattr(cfg, limit, max(getattr(cfg, limit), 64))  # batch shapes x (plain, adapters)
            self.compile_mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.denoiser.compile(dynamic=False, mode=self.compile_mode)
            self.compiled = True
        return self


NEGATIVE = "negative_"  # prefix of a negative condition's arrays beside the condition's own


def split_negative(cond: dict) -> tuple[dict, dict | None]:
    """A condition batch -> (the condition, its negative condition or None).

    A negative condition (the negative class, the negative prompt) rides in the same dict under the
    condition's keys prefixed `negative_`: so stores, loaders and batches carry it without knowing of
    it, and it replaces the unconditional branch wherever CFG computes one (`Conditions.unconditional`)."""
    own = {k: v for k, v in cond.items() if not k.startswith(NEGATIVE)}
    negative = {k[len(NEGATIVE):]: v for k, v in cond.items() if k.startswith(NEGATIVE)}
    return own, negative or None


def has_negative(cond: dict) -> bool:
    return any(k.startswith(NEGATIVE) for k in cond)


class Conditions:
    """Conditions file items -> arrays stored per trajectory -> tensors the denoiser takes."""

    def condition_arrays(self, items: list[dict]) -> dict[str, np.ndarray]:
        """Conditions file items -> arrays stored per trajectory (what training needs, no encoders)."""
        raise NotImplementedError

    def condition_batch(self, arrays: dict[str, np.ndarray]) -> dict:
        """Stored condition arrays (one row per sample) -> tensors the denoiser takes."""
        return {k: torch.as_tensor(v).to(self.device) for k, v in arrays.items()}

    def null_condition(self, cond: dict) -> dict:
        """The unconditional branch's condition for a batch (null class, empty prompt)."""
        raise NotImplementedError

    def unconditional(self, cond: dict) -> dict:
        """CFG's second branch for a batch: its negative condition where it carries one, else the null."""
        own, negative = split_negative(cond)
        # keys the negative leaves out (SDXL's size ids) are the null condition's: the condition's own
        return self.null_condition(own) if negative is None else {**self.null_condition(own), **negative}

    def with_negatives(self, items: list[dict], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`arrays` (condition_arrays of `items`) plus the items' negative conditions as `negative_*`
        arrays, when any item has a "negative" entry (a label or caption; None: no negative, which is
        stored as the null condition, so one batch holds samples with and without one)."""
        if not any("negative" in i for i in items):
            return arrays
        key = "label" if self.spec.condition == "class" else "caption"
        first = self.condition_batch({k: v[:1] for k, v in arrays.items()})
        null = {k: v[:1].float().cpu().numpy().astype(arrays[k].dtype) if v.is_floating_point()
                else v[:1].cpu().numpy().astype(arrays[k].dtype) for k, v in self.null_condition(first).items()}
        out = {k: np.repeat(v, len(items), axis=0) for k, v in null.items()}
        rows = [r for r, i in enumerate(items) if i.get("negative") is not None]
        if rows:  # each distinct negative encoded once (a few negative prompts serve thousands of rows)
            distinct = sorted({items[r]["negative"] for r in rows}, key=str)
            given = self.condition_arrays([{key: v} for v in distinct])
            at = {v: k for k, v in enumerate(distinct)}
            index = [at[items[r]["negative"]] for r in rows]
            for k in out:
                out[k][rows] = given[k][index]
        return {**arrays, **{NEGATIVE + k: v for k, v in out.items()}}

    def release_text_encoders(self) -> None:
        """Free the text encoders once every prompt a stage needs is encoded (text families)."""


class Denoising:
    """One pass of the frozen base, CFG's two branches, and how CFG combines them."""

    scheduler_config: dict

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        raise NotImplementedError

    def branches(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and unconditional outputs in one batched pass of 2B samples."""
        null = self.unconditional(cond)  # the negative condition where the batch has one
        cond, _ = split_negative(cond)
        first, second = (cond, null) if self.spec.cfg_layout == "cond_null" else (null, cond)
        both = {k: torch.cat([first[k], second[k]]) for k in cond}
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), both)
        out_first, out_second = out.chunk(2)
        return (out_first, out_second) if self.spec.cfg_layout == "cond_null" else (out_second, out_first)

    def guide(self, out_cond: torch.Tensor, out_null: torch.Tensor, w: torch.Tensor,
              combine: Combine | None = None) -> torch.Tensor:
        """The guided output from the two branches (the unconditional one may be an earlier step's:
        sampling's `reuse`): `combine` is the teacher's rule (pipeline.guidance.rules), plain CFG by
        default; a family decides which channels it acts on (DiT: epsilon, not the learned variance)."""
        return (combine or cfg)(out_cond, out_null, w)

    def guided_channels(self, out: torch.Tensor) -> torch.Tensor:
        """The channels CFG acts on and the loss compares (all, unless the model learns a variance)."""
        return out

    def scheduler_output(self, out: torch.Tensor, scheduler=None) -> torch.Tensor:
        """What the scheduler's step takes from a model output (see DiT's learned variance)."""
        return self.guided_channels(out)

    def scheduler_overrides(self, scheduler_name: str) -> dict:
        """Changes to the base's scheduler config for a given scheduler class (none by default)."""
        return {}


class AdapterInputs:
    """What the adapters read from the frozen base, and where they go."""

    def adapter_time(self, t: torch.Tensor) -> torch.Tensor:
        """The frozen base's own timestep embedding (B, Dt): the adapters' t input."""
        raise NotImplementedError

    def adapter_condition(self, cond: dict) -> torch.Tensor:
        """The frozen base's condition tokens (B, L, Dc): class embedding or prompt tokens."""
        raise NotImplementedError

    @property
    def embedding_dims(self) -> tuple[int, int]:
        """(Dt, Dc): widths of adapter_time's and adapter_condition's outputs."""
        raise NotImplementedError

    def adapter_targets(self) -> list[tuple[str, nn.Module]]:
        """The denoiser's modules that get an adapter (the backend row's name patterns)."""
        found = [(n, m) for n, m in self.denoiser.named_modules()
                 if any(fnmatch.fnmatchcase(n, p) for p in self.spec.adapter_targets)]
        if not found:
            raise AGDError(f"backend {self.spec.name}", f"no module matches {self.spec.adapter_targets}",
                           "check that base.backend matches the model in base.path")
        return found


class Pipelines:
    """The diffusers pipelines the family runs AGD inside (pipeline.guidance.diffusers_agd)."""

    pipeline_classes: tuple[str, ...] = ()  # the diffusers pipeline classes AGD is tested inside

    @classmethod
    def from_pipeline(cls, spec: BackendSpec, pipe) -> "Family":
        """The family around a loaded diffusers pipeline's own components (nothing is copied)."""
        raise NotImplementedError

    def call_condition(self, arguments: dict) -> dict:
        """The condition of one denoiser call, from its arguments bound by name."""
        raise NotImplementedError

    def build_pipeline(self, scheduler):
        """A diffusers pipeline around this family's loaded components, or None where diffusers has
        none for the model (the embedded pixel-space default)."""
        return None

    def holds_null(self, tensor: torch.Tensor) -> bool:
        """Is this tensor (a view of) the family's own unconditional embedding? (Text families.)"""
        return False

    def pipeline_inputs(self, conditions: list, negatives: list | None = None) -> dict:
        """The pipeline's condition arguments for a list of class labels or captions (and negative prompts)."""
        if self.spec.condition == "class":
            if negatives:
                raise AGDError("negatives", "this family's diffusers pipeline takes no negative class",
                               "sample negative labels with our loop (pipeline.guidance.generate does)")
            return {"class_labels": list(conditions)}
        return {"prompt": list(conditions), **({"negative_prompt": list(negatives)} if negatives else {})}


class Images:
    """Model space and images: the latent shape, decoding (through the VAE where there is one)."""

    vae: nn.Module | None = None  # latent-space families decode through it

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.denoiser.config
        return cfg.in_channels, cfg.sample_size, cfg.sample_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of decoded images: the VAE upsamples by 2 per down block after the first."""
        c, h, w = self.latent_shape
        if self.vae is None:
            return h, w, c
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return h * scale, w * scale, self.vae.config.out_channels

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> uint8 images (N, H, W, C): through the VAE where there is one, else pixels."""
        vae = self.vae_on_device()
        if vae is not None:
            x = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def vae_on_device(self):
        if self.vae is not None and next(self.vae.parameters()).device != self.device:
            self.vae.to(self.device)
        return self.vae


class Family(Weights, Conditions, Denoising, AdapterInputs, Pipelines, Images):
    """A frozen base model behind one interface. Subclasses hold the family's peculiarities."""
