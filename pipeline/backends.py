"""Everything that differs between model families, in one table.

A *backend* row says how a family is loaded, how its condition is encoded, how its CFG batch is
laid out, what its output means and which modules get adapters. The stages only talk to the
`Family` interface below, so they never branch on the model.

| backend    | family | condition      | CFG batch     | output                      | adapters on         |
|------------|--------|----------------|---------------|-----------------------------|---------------------|
| mnist-dit  | DiT    | class (10)     | [cond, null]  | epsilon                     | every block's attn1 |
| dit-xl-2   | DiT    | class (1,000)  | [cond, null]  | epsilon + learned variance  | every block's attn1 |
| sd21       | SD     | text (CLIP)    | [null, cond]  | v (from the scheduler)      | every attn2         |
| sdxl       | SDXL   | text (2 CLIPs) | [null, cond]  | epsilon                     | every attn2         |
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import preflight
from pipeline.errors import AGDError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: str  # key of FAMILIES
    condition: str  # "class" or "text"
    cfg_layout: str  # order of the two halves of the CFG batch: "cond_null" or "null_cond"
    adapter_targets: tuple[str, ...]  # fnmatch patterns over module names of the denoiser
    w_range: tuple[float, float]  # the paper's training range of guidance scales
    num_classes: int = 0  # class-conditional backends: labels 0..num_classes-1 (the null class is next)
    hub_id: str = ""


BACKENDS = {
    "mnist-dit": BackendSpec("mnist-dit", "dit", "class", "cond_null", ("transformer_blocks.*.attn1",), (1.0, 5.0), 10),
    "dit-xl-2": BackendSpec("dit-xl-2", "dit", "class", "cond_null", ("transformer_blocks.*.attn1",), (1.0, 6.0),
                            1000, "facebook/DiT-XL-2-256"),
    "sd21": BackendSpec("sd21", "sd", "text", "null_cond",
                        ("down_blocks.*.attn2", "mid_block.*.attn2", "up_blocks.*.attn2"), (1.0, 12.0),
                        hub_id="stabilityai/stable-diffusion-2-1"),
    "sdxl": BackendSpec("sdxl", "sdxl", "text", "null_cond",
                        ("down_blocks.*.attn2", "mid_block.*.attn2", "up_blocks.*.attn2"), (1.0, 12.0),
                        hub_id="stabilityai/stable-diffusion-xl-base-1.0"),
}


def get_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise AGDError("params.yaml: base.backend", f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def state_fingerprint(module: nn.Module) -> str:
    """Identity of a model's weights: sha256 over names, shapes and bytes of its state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.is_meta:  # shape-only models (size reports, benchmarks): names and shapes identify them
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]


def _check_path(path: str) -> None:
    """A local path must exist; anything else is a hub id, which needs the network."""
    first = path.split("/")[0]
    looks_local = (path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
                   or Path(first).is_dir())  # "models/x": a folder under an existing local directory
    if looks_local and not Path(path).is_dir():
        raise AGDError(f"base.path {path}", "no such model folder",
                       "point base.path at a diffusers save_pretrained folder or a hub id such as "
                       "facebook/DiT-XL-2-256")


def _load_error(path: str, err: Exception) -> AGDError:
    import os
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    fix = ("download it where the hub is reachable and set base.path to the local folder" if offline
           else "check the hub id, your network, or point base.path at a local folder")
    return AGDError(f"base.path {path}", f"could not load the model ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:160]})", fix)


class Family:
    """A frozen base model behind one interface. Subclasses hold the family's peculiarities."""

    spec: BackendSpec
    denoiser: nn.Module  # the network adapters are injected into
    scheduler_config: dict
    fingerprint: str

    # --- condition handling ---------------------------------------------------------------
    def condition_arrays(self, items: list[dict]) -> dict[str, np.ndarray]:
        """Conditions file items -> arrays stored per trajectory (what training needs, no encoders)."""
        raise NotImplementedError

    def null_condition(self, cond: dict) -> dict:
        raise NotImplementedError

    def condition_batch(self, arrays: dict[str, np.ndarray]) -> dict:
        """Stored condition arrays (one row per sample) -> tensors the denoiser takes."""
        return {k: torch.as_tensor(v).to(self.device) for k, v in arrays.items()}

    # --- forward passes -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        raise NotImplementedError

    def guided(self, x: torch.Tensor, t: torch.Tensor, cond: dict, w: torch.Tensor):
        """Classifier-free guidance in one batched pass of 2B samples: returns (out_cfg, out_cond)."""
        null = self.null_condition(cond)
        first, second = (cond, null) if self.spec.cfg_layout == "cond_null" else (null, cond)
        both = {k: torch.cat([first[k], second[k]]) for k in cond}
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), both)
        out_first, out_second = out.chunk(2)
        out_cond, out_null = (out_first, out_second) if self.spec.cfg_layout == "cond_null" else (out_second, out_first)
        return self.combine(out_cond, out_null, w), out_cond

    def combine(self, out_cond: torch.Tensor, out_null: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w = w.to(out_cond.dtype).view(-1, *([1] * (out_cond.dim() - 1)))
        return out_null + w * (out_cond - out_null)

    def guided_channels(self, out: torch.Tensor) -> torch.Tensor:
        """The channels CFG acts on and the loss compares (all, unless the model learns a variance)."""
        return out

    def scheduler_output(self, out: torch.Tensor) -> torch.Tensor:
        return self.guided_channels(out)

    # --- adapter inputs -------------------------------------------------------------------
    def adapter_inputs(self, t: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(timestep embedding (B, Dt), condition tokens (B, L, Dc)) from the frozen base."""
        raise NotImplementedError

    @property
    def embedding_dims(self) -> tuple[int, int]:
        raise NotImplementedError

    # --- shapes and images ----------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> uint8 images (N, H, W, C)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def adapter_targets(self) -> list[tuple[str, nn.Module]]:
        found = [(n, m) for n, m in self.denoiser.named_modules()
                 if any(fnmatch.fnmatchcase(n, p) for p in self.spec.adapter_targets)]
        if not found:
            raise AGDError(f"backend {self.spec.name}", f"no module matches {self.spec.adapter_targets}",
                           "check that base.backend matches the model in base.path")
        return found

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def identity(self) -> dict:
        """What adapter files record about the base (the path only as a hint for people)."""
        return {"backend": self.spec.name, "fingerprint": self.fingerprint, "path": self.path}

    def content_identity(self) -> dict:
        """What decides the content of a trajectory store: the weights, not where they lie."""
        return {"backend": self.spec.name, "fingerprint": self.fingerprint}

    def freeze(self) -> "Family":
        for module in self.modules():
            module.eval()  # DiT label dropout and any dropout stay off for good
            module.requires_grad_(False)
        return self

    def modules(self) -> list[nn.Module]:
        return [self.denoiser]

    def to(self, device) -> "Family":
        for module in self.modules():
            module.to(device)
        return self


class DiTFamily(Family):
    """Class-conditional DiT (diffusers DiTTransformer2DModel), pixel space or with a VAE."""

    def __init__(self, spec: BackendSpec, path: str, transformer, scheduler_config: dict, vae=None):
        self.spec, self.path, self.denoiser, self.vae = spec, path, transformer, vae
        self.scheduler_config = scheduler_config
        cfg = transformer.config
        self.num_classes = cfg.num_embeds_ada_norm  # the null class is this index
        self.learned_variance = cfg.out_channels == 2 * cfg.in_channels
        self.fingerprint = state_fingerprint(transformer)

    @classmethod
    def load(cls, spec: BackendSpec, path: str, dtype: torch.dtype) -> "DiTFamily":
        from diffusers import AutoencoderKL, DiTTransformer2DModel
        from diffusers.schedulers import DDIMScheduler

        _check_path(path)
        preflight.model_class(path, "transformer", ("DiTTransformer2DModel", "Transformer2DModel"), spec.name)
        try:
            transformer = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer")
            scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
            vae = None
            if (Path(path) / "vae").is_dir() or not Path(path).exists():
                vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        except (OSError, ValueError, EnvironmentError) as err:
            raise _load_error(path, err) from None
        family = cls(spec, path, transformer, scheduler_config, vae)  # fingerprint in full precision
        if dtype != torch.float32:  # a frozen half-precision base: the memory-saving default on GPUs
            transformer.to(dtype)
            if vae is not None:
                vae.to(dtype)
        return family.freeze()

    def modules(self):
        return [self.denoiser] + ([self.vae] if self.vae is not None else [])

    def condition_arrays(self, items):
        labels = np.array([i["label"] for i in items], np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise AGDError("conditions", f"labels must be in [0, {self.num_classes})", "re-run `agd conditions`")
        return {"labels": labels}

    def null_condition(self, cond):
        return {"labels": torch.full_like(cond["labels"], self.num_classes)}

    def forward(self, x, t, cond):
        return self.denoiser(x.to(self.dtype), timestep=t, class_labels=cond["labels"]).sample

    def guided(self, x, t, cond, w):
        out_cfg, out_cond = super().guided(x, t, cond, w)
        if self.learned_variance:  # CFG on epsilon only; the variance comes from the conditional branch
            c = x.shape[1]
            out_cfg = torch.cat([out_cfg[:, :c], out_cond[:, c:]], dim=1)
        return out_cfg, out_cond

    def guided_channels(self, out):
        return out[:, : out.shape[1] // 2] if self.learned_variance else out

    def adapter_inputs(self, t, cond):
        emb = self.denoiser.transformer_blocks[0].norm1.emb  # CombinedTimestepLabelEmbeddings
        t_emb = emb.timestep_embedder(emb.time_proj(t).to(self.dtype))
        c_emb = emb.class_embedder(cond["labels"])
        return t_emb, c_emb.unsqueeze(1)

    @property
    def embedding_dims(self):
        d = self.denoiser.inner_dim
        return d, d

    @property
    def latent_shape(self):
        cfg = self.denoiser.config
        return cfg.in_channels, cfg.sample_size, cfg.sample_size

    def decode(self, x):
        if self.vae is not None:
            x = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1)


class SDFamily(Family):
    """Stable Diffusion 2.x-style text-to-image UNet (epsilon or v prediction, one CLIP encoder).

    Text encoders load lazily: only conditions need them (trajectories, evaluation, sampling);
    training reads stored prompt embeddings and never loads them.
    """

    text_subfolders = (("tokenizer", "text_encoder"),)

    def __init__(self, spec, path, unet, scheduler_config, vae, dtype):
        self.spec, self.path, self.denoiser, self.vae = spec, path, unet, vae
        self.scheduler_config, self.model_dtype = scheduler_config, dtype
        self.fingerprint = state_fingerprint(unet)
        self._text = None
        self._null = None

    @classmethod
    def load(cls, spec, path, dtype):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        _check_path(path)
        preflight.model_class(path, "unet", ("UNet2DConditionModel",), spec.name)
        try:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
            scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
        except (OSError, ValueError, EnvironmentError) as err:
            raise _load_error(path, err) from None
        family = cls(spec, path, unet, scheduler_config, vae, dtype)
        if dtype != torch.float32:
            unet.to(dtype)
            vae.to(dtype)
        return family.freeze()

    def modules(self):
        return [self.denoiser, self.vae]

    # --- text ------------------------------------------------------------------------------
    def text_models(self):
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        if self._text is None:
            pairs = []
            for tok_dir, enc_dir in self.text_subfolders:
                enc_cls = CLIPTextModelWithProjection if enc_dir == "text_encoder_2" else CLIPTextModel
                try:
                    tokenizer = AutoTokenizer.from_pretrained(self.path, subfolder=tok_dir)
                    encoder = enc_cls.from_pretrained(self.path, subfolder=enc_dir).to(self.device).eval()
                except (OSError, ValueError, EnvironmentError) as err:
                    raise _load_error(self.path, err) from None
                encoder.requires_grad_(False)
                pairs.append((tokenizer, encoder))
            self._text = pairs
        return self._text

    @torch.no_grad()
    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        (tokenizer, encoder), = self.text_models()
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.device)
        return {"prompt_embeds": encoder(ids)[0]}

    def condition_arrays(self, items):
        embeds = self.encode([i["caption"] for i in items])
        return {k: v.to(torch.float16).cpu().numpy() for k, v in embeds.items()}  # fp16 keeps stores small

    def condition_batch(self, arrays):
        return {k: torch.as_tensor(v).to(self.device, self.dtype) for k, v in arrays.items()}

    def null_condition(self, cond):
        if self._null is None:
            self._null = self.condition_batch(self.condition_arrays([{"caption": ""}]))
        n = len(next(iter(cond.values())))
        return {k: v.expand(n, *v.shape[1:]) for k, v in self._null.items()}

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x, t, cond):
        return self.denoiser(x.to(self.dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(self.dtype)).sample

    def adapter_inputs(self, t, cond):
        t_emb = self.denoiser.time_embedding(self.denoiser.time_proj(t).to(self.dtype))
        return t_emb, cond["prompt_embeds"]

    @property
    def embedding_dims(self):
        cfg = self.denoiser.config
        t_dim = cfg.time_embedding_dim or cfg.block_out_channels[0] * 4
        return t_dim, cfg.cross_attention_dim

    @property
    def latent_shape(self):
        cfg = self.denoiser.config
        return cfg.in_channels, cfg.sample_size, cfg.sample_size

    def decode(self, x):
        images = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class SDXLFamily(SDFamily):
    """SDXL: two text encoders (penultimate hidden states concatenated), a pooled embedding and
    size/crop time ids as extra `text_time` conditioning."""

    text_subfolders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    @torch.no_grad()
    def encode(self, captions):
        hidden, pooled = [], None
        for tokenizer, encoder in self.text_models():
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the second encoder's projected pooled output
        size = self.latent_shape[1] * 2 ** (len(self.vae.config.block_out_channels) - 1)
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(len(captions), 1)
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled": pooled, "time_ids": time_ids}

    def null_condition(self, cond):
        if self._null is None:
            null = super().null_condition(cond)
            if self.denoiser.config.get("force_zeros_for_empty_prompt", True):  # as SDXL's pipeline does
                null = {**null, "prompt_embeds": torch.zeros_like(null["prompt_embeds"]),
                        "pooled": torch.zeros_like(null["pooled"])}
            self._null = {k: v[:1] for k, v in null.items()}
        n = len(cond["prompt_embeds"])
        return {"prompt_embeds": self._null["prompt_embeds"].expand(n, -1, -1),
                "pooled": self._null["pooled"].expand(n, -1), "time_ids": cond["time_ids"]}

    def forward(self, x, t, cond):
        added = {"text_embeds": cond["pooled"].to(self.dtype), "time_ids": cond["time_ids"].to(self.dtype)}
        return self.denoiser(x.to(self.dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(self.dtype),
                             added_cond_kwargs=added).sample


FAMILIES: dict[str, type[Family]] = {"dit": DiTFamily, "sd": SDFamily, "sdxl": SDXLFamily}


def load_base(backend: str, path: str, dtype: str = "float32") -> Family:
    """Load the frozen base of `backend` from a local diffusers folder or a hub id."""
    spec = get_spec(backend)
    if spec.family not in FAMILIES:
        raise AGDError(f"base.backend {backend}", "family not available", f"use one of {', '.join(FAMILIES)}")
    return FAMILIES[spec.family].load(spec, path, DTYPES[dtype])

