"""Training-data preparation inside ComfyUI: write one clip's training sample in the trainer's shard format."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from . import paths
from .logic import safe_prefix, single_identity
from .types import MocaId


class MoCASaveTrainingSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCASaveTrainingSample", display_name="MoCA Save Training Sample", category="MoCA/training",
            description="Writes one training sample for train_moca.py - the clip's Wan VAE latent, the caption's umT5 "
                        "states, the reference identity (ArcFace + face-crop latent) and optional face masks - as a "
                        "shard in output/moca_training/<prefix>_NNNNN_.safetensors (the format `train_moca.py cache` "
                        "writes). Point the training config's data.shards at that folder. Never overwrites a file.",
            inputs=[io.Latent.Input("video_latent", tooltip="VAE Encode (Wan 2.1 VAE) of the training clip: 4k+1 frames."),
                    io.Conditioning.Input("caption_conditioning",
                                          tooltip="The caption through CLIP Text Encode (umT5-XXL) or MoCA Load Text Embeds."),
                    MocaId.Input("moca_id", tooltip="The reference face from MoCA Encode Face (with the VAE connected) "
                                                    "or MoCA Load Identity; ideally photos from another clip of the person."),
                    io.String.Input("caption", default="", multiline=True,
                                    tooltip="The caption text, stored with the sample for reference."),
                    io.String.Input("filename_prefix", default="sample",
                                    tooltip="File name prefix under output/moca_training/ (subfolders with '/')."),
                    io.Mask.Input("face_mask", optional=True,
                                  tooltip="Optional per-frame face masks (one per video frame, video size): LVPL weighs "
                                          "the face region with them.")],
            outputs=[io.String.Output(display_name="path", tooltip="The shard that was written.")],
            is_output_node=True)

    @classmethod
    def execute(cls, video_latent, caption_conditioning, moca_id, caption, filename_prefix, face_mask=None):
        moca_id = single_identity(moca_id, "MoCA Save Training Sample")
        from ..moca_model.training.data import ShardError, sample_from_parts, write_shard
        samples = video_latent["samples"]
        if samples.ndim != 5 or samples.shape[0] != 1:
            raise ValueError(f"input 'video_latent': expected one Wan video latent [1, 16, T, h, w], got "
                             f"{list(samples.shape)}; encode a single clip with VAE Encode (Wan 2.1 VAE)")
        if moca_id.face_latent is None or moca_id.arcface is None:
            raise ValueError("input 'moca_id': a training sample needs both the ArcFace embedding and the face-crop "
                             "latent; connect the Wan VAE to MoCA Encode Face")
        text = caption_conditioning[0][0]
        for name, t in (("video_latent", samples), ("caption_conditioning", text), ("face_mask", face_mask)):
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"input '{name}' holds NaN or infinity ({int((~torch.isfinite(t)).sum())} of "
                                 f"{t.numel()} values): the model that made it is broken; no sample was written")
        try:
            sample = sample_from_parts(samples, text, moca_id.arcface, moca_id.face_latent, face_mask,
                                       caption=caption, source="ComfyUI")
        except ShardError as e:
            name = "face_mask" if "face mask" in str(e) else "video_latent" if "video latent" in str(e) else \
                "caption_conditioning"
            raise ValueError(f"input '{name}': {e}") from e
        path = paths.output_path("moca_training", safe_prefix(filename_prefix, "sample"))
        write_shard(path, [sample], overwrite=False, recognizer=moca_id.recognizer)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved {os.path.basename(path)}"))
