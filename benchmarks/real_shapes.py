"""Random-weight models at the real backends' shapes (no hub needed), for size reports and GPU checks."""

from __future__ import annotations

import torch

from pipeline.backends import BACKENDS
from pipeline.backends.dit import DiTFamily
from pipeline.backends.sd import SDFamily, SDXLFamily

DDPM_LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
               "clip_sample": False}
SD_SCALED = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def dit_xl_2():
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                  num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    return DiTFamily(BACKENDS["dit-xl-2"], "random:dit-xl-2", model, DDPM_LINEAR)


def sd21():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
    return SDFamily(BACKENDS["sd21"], "random:sd21", unet, {**SD_SCALED, "prediction_type": "v_prediction"}, None,
                    torch.float32)


def sdxl():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    return SDXLFamily(BACKENDS["sdxl"], "random:sdxl", unet, SD_SCALED, None, torch.float32)


BUILDERS = {"dit-xl-2": dit_xl_2, "sd21": sd21, "sdxl": sdxl}
