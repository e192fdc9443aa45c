"""Class-conditional DiT families (the embedded default and DiT-XL/2): epsilon, optional learned variance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.backends.family import Family, check_path, load_error
from pipeline.backends.variance import check_variance, reads_variance
from pipeline.run import preflight
from pipeline.run.errors import AGDError

if TYPE_CHECKING:
    from pipeline.backends import BackendSpec


class DiTFamily(Family):
    """Class-conditional DiT (diffusers DiTTransformer2DModel), pixel space or with a VAE."""

    def __init__(self, spec: BackendSpec, path: str, transformer, scheduler_config: dict, vae=None):
        self.spec, self.path, self.denoiser, self.vae = spec, path, transformer, vae
        self.scheduler_config = scheduler_config
        cfg = transformer.config
        self.num_classes = cfg.num_embeds_ada_norm  # the null class is this index
        out_channels = cfg.out_channels or cfg.in_channels  # diffusers: None means in_channels
        self.learned_variance = out_channels == 2 * cfg.in_channels
        check_variance(path, cfg.in_channels, out_channels, scheduler_config)
        self.take_fingerprint()
        self.cfg_channels = 0  # 0: guide every epsilon channel (diffusers' DiTPipeline); see guide()

    @classmethod
    def load(cls, spec: BackendSpec, path: str, dtype: torch.dtype) -> "DiTFamily":
        from diffusers import AutoencoderKL, DiTTransformer2DModel
        from diffusers.schedulers import DDIMScheduler

        check_path(path)
        preflight.model_class(path, "transformer", ("DiTTransformer2DModel", "Transformer2DModel"), spec.name)
        try:
            transformer = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer")
            scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
            vae = None
            if (Path(path) / "vae").is_dir() or not Path(path).exists():
                vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        except (OSError, ValueError, EnvironmentError) as err:
            raise load_error(path, err) from None
        family = cls(spec, path, transformer, scheduler_config, vae)  # fingerprint in full precision
        family.convert(dtype, vae)
        return family.freeze()

    pipeline_classes = ("DiTPipeline",)

    @classmethod
    def from_pipeline(cls, spec, pipe):
        return cls(spec, pipe.name_or_path, pipe.transformer, dict(pipe.scheduler.config), pipe.vae)

    def call_condition(self, arguments):
        return {"labels": arguments["class_labels"]}

    def build_pipeline(self, scheduler):
        # DiTPipeline decodes through a VAE, writes the null class as 1,000 and guides every epsilon
        # channel: only a DiT-XL/2-like model guided like it fits. It also drops the variance channels
        # before the scheduler's step, and does not scale its initial noise by the scheduler's
        # init_noise_sigma: a sampler that reads the learned variance (DDPM, as the stages sample it)
        # or starts above sigma 1 (Euler) runs our loop instead, which does both.
        if self.vae is None or self.num_classes != 1000 or self.cfg_channels or reads_variance(scheduler.config) \
                or float(scheduler.init_noise_sigma) != 1.0:
            return None
        from diffusers import DiTPipeline

        return DiTPipeline(transformer=self.denoiser, vae=self.vae_on_device(), scheduler=scheduler)

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

    def guide(self, out_cond, out_null, w, combine=None):
        # Guidance acts on epsilon only: the learned variance comes from the conditional branch. With
        # cfg_channels = 3 only the first three epsilon channels are guided, as the original DiT code
        # does "for exact reproducibility"; the rest stay conditional. A rule's norms and stds (rescale,
        # APG) are therefore taken over the guided channels alone.
        guided = self.cfg_channels or self.denoiser.config.in_channels
        if guided >= out_cond.shape[1]:
            return super().guide(out_cond, out_null, w, combine)
        head = super().guide(out_cond[:, :guided], out_null[:, :guided], w, combine)
        return torch.cat([head, out_cond[:, guided:]], dim=1)

    def content_identity(self):
        identity = super().content_identity()
        return {**identity, "cfg_channels": self.cfg_channels} if self.cfg_channels else identity

    def scheduler_overrides(self, scheduler_name):
        # DDPM with the model's learned variance: the DiT paper's sampler (250 steps for its FIDs).
        if self.learned_variance and scheduler_name == "DDPMScheduler":
            return {"variance_type": "learned_range"}
        # Every other sampler gets the epsilon channels alone (scheduler_output), so none may expect
        # a variance from the base's config (DPMSolver's learned_range would cut the epsilon it gets).
        if reads_variance(self.scheduler_config):
            return {"variance_type": None}
        return {}

    def scheduler_output(self, out, scheduler=None):
        learned = reads_variance(getattr(scheduler, "config", None) or {})
        return out if self.learned_variance and learned else self.guided_channels(out)

    def guided_channels(self, out):
        return out[:, : out.shape[1] // 2] if self.learned_variance else out

    def adapter_time(self, t):
        emb = self.denoiser.transformer_blocks[0].norm1.emb  # CombinedTimestepLabelEmbeddings
        return emb.timestep_embedder(emb.time_proj(t).to(self.dtype))

    def adapter_condition(self, cond):
        emb = self.denoiser.transformer_blocks[0].norm1.emb
        return emb.class_embedder(cond["labels"]).unsqueeze(1)

    @property
    def embedding_dims(self):
        d = self.denoiser.inner_dim
        return d, d


