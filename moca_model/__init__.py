"""moca_model: MoCA (Mixture of Cross-Attention) identity adapters on the Wan 2.1 T2V DiT, in pure PyTorch.

No ComfyUI import anywhere in this package: the trainer, the demo and the tests run without it, and the
ComfyUI nodes call into it.
"""
from .adapter import MoCAAdapter
from .checkpoint import CheckpointError, MoCAFile, load_moca, read_moca, save_moca, save_wan_checkpoint
from .config import PRESETS, WHOLE_CLIP, MoCAConfig
from .dit import MoCADiT
from .htp import HierarchicalTemporalPooling
from .identity import MoCAIdentity
from .layer import MoCALayer
from .options import MoCAOptions
from .regions import RegionalIdentity, ResolvedRegions
from .router import MoCARouter
from .taca import TemporalAwareCrossAttention
from .text_embeds import load_text_embeds, save_text_embeds
from .tokenizer import IdentityTokenizer

__version__ = "0.1.0"

__all__ = [
    "MoCAConfig", "PRESETS", "WHOLE_CLIP", "MoCADiT", "MoCAAdapter", "MoCALayer", "MoCAOptions", "MoCARouter",
    "HierarchicalTemporalPooling", "TemporalAwareCrossAttention", "IdentityTokenizer",
    "save_moca", "load_moca", "read_moca", "save_wan_checkpoint", "MoCAFile", "CheckpointError",
    "MoCAIdentity", "save_text_embeds", "load_text_embeds", "RegionalIdentity", "ResolvedRegions",
]
