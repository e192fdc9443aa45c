"""Guidance adapters (Perez Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using
Adapters", TMLR 2025): small modules on the frozen base's attention that take the guidance scale w as
an input, so that one pass reproduces CFG's two.

| module              | what it holds                                                              |
|---------------------|----------------------------------------------------------------------------|
| adapter_set.py      | AdapterSet: all adapters of a base, the hooks that apply them, save / load |
| offset.py           | the offset adapter and its fused (once-per-pass) form                      |
| cross_attention.py  | the cross-attention adapter and its fused form                             |
| layers.py           | the w embedding and what the architectures' fused forms share              |
| saved.py            | the adapter folder on disk (adapters.safetensors + adapters.json)          |
"""

from pipeline.guidance.adapters.adapter_set import ARCHITECTURES, AdapterSet
from pipeline.guidance.adapters.cross_attention import CrossAttentionAdapter
from pipeline.guidance.adapters.layers import Fixed, GuidanceEmbedding
from pipeline.guidance.adapters.offset import OffsetAdapter
from pipeline.guidance.adapters.saved import FORMAT_VERSION, read_meta

__all__ = ["ARCHITECTURES", "AdapterSet", "CrossAttentionAdapter", "FORMAT_VERSION", "Fixed", "GuidanceEmbedding",
           "OffsetAdapter", "read_meta"]
