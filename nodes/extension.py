"""The V3 extension: registers the pack's model folders, then lists its nodes."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from . import paths

paths.register_folders()
paths.offer_toy_inputs()
if paths.toy_vae_notice():
    logging.warning(paths.toy_vae_notice())

from .nodes_face import MoCAEncodeFace, MoCAIdentityScore, MoCALoadIdentity, MoCASaveIdentity  # noqa: E402
from .nodes_loaders import MoCAAdapterLoader, MoCADiTLoader, MoCAFaceAnalyzerLoader  # noqa: E402
from .nodes_moca import (MoCAApply, MoCAExpertMixing, MoCAIdentityConditioning, MoCAIdentityRegion,  # noqa: E402
                         MoCATemporalPooling)
from .nodes_sampler import MoCASampler  # noqa: E402
from .nodes_text import MoCALoadTextEmbeds, MoCASaveTextEmbeds, MoCAToyTextEncode  # noqa: E402
from .nodes_training import MoCASaveTrainingSample  # noqa: E402

NODES = [
    MoCAAdapterLoader, MoCADiTLoader, MoCAFaceAnalyzerLoader,
    MoCAEncodeFace, MoCASaveIdentity, MoCALoadIdentity,
    MoCATemporalPooling, MoCAExpertMixing, MoCAApply, MoCAIdentityConditioning, MoCAIdentityRegion,
    MoCASampler, MoCASaveTextEmbeds, MoCALoadTextEmbeds, MoCAIdentityScore, MoCASaveTrainingSample,
    MoCAToyTextEncode,
]


class MoCAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
