"""Stable Diffusion text-to-image families: SD 2.x (one CLIP, epsilon or v) and SDXL (two CLIPs, text_time)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.backends.family import Family, check_path, load_error, split_negative
from pipeline.run import preflight
from pipeline.run.devices import free_memory

ENCODE_CHUNK = 64  # captions through the text encoders at once


class SDFamily(Family):
    """Stable Diffusion 2.x-style text-to-image UNet (epsilon or v prediction, one CLIP encoder).

    Text encoders load lazily: only conditions need them (trajectories, evaluation, sampling);
    training reads stored prompt embeddings and never loads them.
    """

    text_subfolders = (("tokenizer", "text_encoder"),)

    def __init__(self, spec, path, unet, scheduler_config, vae, dtype):
        self.spec, self.path, self.denoiser, self.vae = spec, path, unet, vae
        self.scheduler_config, self.model_dtype = scheduler_config, dtype
        self.take_fingerprint()
        self._text = None
        self._null = None

    @classmethod
    def load(cls, spec, path, dtype):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        check_path(path)
        preflight.model_class(path, "unet", ("UNet2DConditionModel",), spec.name)
        try:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
            scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
        except (OSError, ValueError, EnvironmentError) as err:
            raise load_error(path, err) from None
        family = cls(spec, path, unet, scheduler_config, vae, dtype)  # fingerprint in full precision
        family.convert(dtype, vae)
        return family.freeze()

    def modules(self):
        return [self.denoiser, self.vae]

    # --- diffusers pipelines ---------------------------------------------------------------
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionControlNetPipeline")

    @classmethod
    def from_pipeline(cls, spec, pipe):
        return cls(spec, pipe.name_or_path, pipe.unet, dict(pipe.scheduler.config), pipe.vae, pipe.unet.dtype)

    def call_condition(self, arguments):
        return {"prompt_embeds": arguments["encoder_hidden_states"]}

    # The pipeline gets the prompt embeddings our loop uses (pipeline_inputs), in the base's dtype, and no
    # text encoder: with one it casts the embeddings, and so its latents, to the encoder's float32, which
    # a bfloat16 or float16 UNet refuses ("mat1 and mat2 must have the same dtype").
    def build_pipeline(self, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae_on_device(), text_encoder=None, tokenizer=None,
                                       unet=self.denoiser, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    def pipeline_inputs(self, conditions, negatives=None):
        items = [{"caption": c} if negatives is None else {"caption": c, "negative": n}
                 for c, n in zip(conditions, negatives or conditions)]
        cond = self.condition_batch(self.with_negatives(items, self.condition_arrays(items)))
        return self.pipeline_embeds(split_negative(cond)[0], self.unconditional(cond))

    def pipeline_embeds(self, cond, null):
        """The pipeline's embedding arguments for a condition batch and its null condition."""
        return {"prompt_embeds": cond["prompt_embeds"], "negative_prompt_embeds": null["prompt_embeds"]}

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
                    raise load_error(self.path, err) from None
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
        # in chunks, each moved to the host at once: 5,000 SDXL captions' hidden states are 80 GB on
        # the device in float32 all together, 1.6 GB on the host in float16 (which keeps stores small)
        parts = []
        for start in range(0, len(items), ENCODE_CHUNK):
            embeds = self.encode([i["caption"] for i in items[start:start + ENCODE_CHUNK]])
            parts.append({k: v.to(torch.float16).cpu().numpy() for k, v in embeds.items()})
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def condition_batch(self, arrays):
        return {k: torch.as_tensor(v).to(self.device, self.dtype) for k, v in arrays.items()}

    def null_embeds(self) -> dict:
        """The empty prompt's condition, encoded once (CFG needs it at every step, long after the
        text encoders are released)."""
        if self._null is None:
            self._null = self.condition_batch(self.condition_arrays([{"caption": ""}]))
        return self._null

    def holds_null(self, tensor):
        return self._null is not None and any(tensor.data_ptr() == v.data_ptr() for v in self._null.values())

    def null_condition(self, cond):
        n = len(next(iter(cond.values())))
        return {k: v.expand(n, *v.shape[1:]) for k, v in self.null_embeds().items()}

    def release_text_encoders(self):
        self.null_embeds()
        if self._text is not None:
            self._text = None
            free_memory(self.device)

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x, t, cond):
        return self.denoiser(x.to(self.dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(self.dtype)).sample

    def adapter_time(self, t):
        return self.denoiser.time_embedding(self.denoiser.time_proj(t).to(self.dtype))

    def adapter_condition(self, cond):
        return cond["prompt_embeds"]

    @property
    def embedding_dims(self):
        cfg = self.denoiser.config
        t_dim = cfg.time_embedding_dim or cfg.block_out_channels[0] * 4
        return t_dim, cfg.cross_attention_dim



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

    pipeline_classes = ("StableDiffusionXLPipeline",)

    def call_condition(self, arguments):
        added = arguments["added_cond_kwargs"]
        return {"prompt_embeds": arguments["encoder_hidden_states"], "pooled": added["text_embeds"],
                "time_ids": added["time_ids"]}

    def build_pipeline(self, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=self.vae_on_device(), text_encoder=None, text_encoder_2=None,
                                         tokenizer=None, tokenizer_2=None, unet=self.denoiser, scheduler=scheduler)

    def pipeline_embeds(self, cond, null):
        return {**super().pipeline_embeds(cond, null), "pooled_prompt_embeds": cond["pooled"],
                "negative_pooled_prompt_embeds": null["pooled"]}

    def null_embeds(self):
        if self._null is None:
            null = self.condition_batch(self.condition_arrays([{"caption": ""}]))
            if self.denoiser.config.get("force_zeros_for_empty_prompt", True):  # as SDXL's pipeline does
                null = {**null, "prompt_embeds": torch.zeros_like(null["prompt_embeds"]),
                        "pooled": torch.zeros_like(null["pooled"])}
            self._null = null
        return self._null

    def null_condition(self, cond):
        n, null = len(cond["prompt_embeds"]), self.null_embeds()
        return {"prompt_embeds": null["prompt_embeds"].expand(n, -1, -1),
                "pooled": null["pooled"].expand(n, -1), "time_ids": cond["time_ids"]}

    def forward(self, x, t, cond):
        added = {"text_embeds": cond["pooled"].to(self.dtype), "time_ids": cond["time_ids"].to(self.dtype)}
        return self.denoiser(x.to(self.dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(self.dtype),
                             added_cond_kwargs=added).sample
