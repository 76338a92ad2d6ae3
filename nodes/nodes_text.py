"""Cached umT5 conditioning: encode a prompt once, reuse it without loading the 11 GB text encoder."""
from __future__ import annotations

import os

from comfy_api.latest import io, ui

import folder_paths

from ..moca_model.text_embeds import load_text_embeds, save_text_embeds
from . import paths
from .logic import check_choices, safe_prefix


class MoCASaveTextEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCASaveTextEmbeds", display_name="MoCA Save Text Embeds", category="MoCA/conditioning",
            description="Saves a text conditioning (umT5 states) to output/moca_text_embeds/<prefix>_NNNNN_.safetensors. "
                        "Load it with MoCA Load Text Embeds to skip the text encoder in later runs and in training "
                        "data preparation. Never overwrites an existing file.",
            inputs=[io.Conditioning.Input("conditioning", tooltip="From CLIP Text Encode (umT5-XXL, type wan)."),
                    io.String.Input("filename_prefix", default="prompt",
                                    tooltip="File name prefix under output/moca_text_embeds/ (subfolders with '/')."),
                    io.String.Input("note", default="", multiline=True,
                                    tooltip="Optional text stored in the file header, e.g. the prompt itself.")],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
            is_output_node=True)

    @classmethod
    def execute(cls, conditioning, filename_prefix, note):
        path = paths.output_path("moca_text_embeds", safe_prefix(filename_prefix, "prompt"))
        _, dropped = save_text_embeds(path, conditioning, {"note": note} if note else None)
        msg = f"saved {os.path.basename(path)}" + (f" (not stored: {', '.join(dropped)})" if dropped else "")
        return io.NodeOutput(path, ui=ui.PreviewText(msg))


class MoCALoadTextEmbeds(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, embeds_file):
        return check_choices('MoCA Load Text Embeds', embeds_file=(embeds_file, paths.files("moca_text_embeds")))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCALoadTextEmbeds", display_name="MoCA Load Text Embeds", category="MoCA/conditioning",
            description="Loads a text conditioning written by MoCA Save Text Embeds (from models/moca_text_embeds or "
                        "output/moca_text_embeds) - no text encoder needed.",
            inputs=[io.Combo.Input("embeds_file", options=paths.files("moca_text_embeds"),
                                   tooltip="A cached conditioning .safetensors file. Press R to refresh the list.")],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="The conditioning, as CLIP Text Encode gives it."),
                     io.String.Output(display_name="note", tooltip="The note stored with it (e.g. the prompt).")])

    @classmethod
    def execute(cls, embeds_file):
        path = folder_paths.get_full_path("moca_text_embeds", embeds_file)
        if path is None:
            raise FileNotFoundError(f"input 'embeds_file': {embeds_file!r} is not in "
                                    f"{folder_paths.get_folder_paths('moca_text_embeds')}; write it with MoCA Save Text Embeds.")
        cond, meta = load_text_embeds(path)
        return io.NodeOutput(cond, meta.get("note", ""))

    @classmethod
    def fingerprint_inputs(cls, embeds_file):
        path = folder_paths.get_full_path("moca_text_embeds", embeds_file)
        return os.path.getmtime(path) if path else float("nan")


class MoCAToyTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAToyTextEncode", display_name="MoCA Toy Text Encode", category="MoCA/toy world",
            description="The toy world's text encoder (a fixed word table, no model file): a prompt -> conditioning "
                        "for the toy Wan model shipped with the pack (toy_models/). Use it with toy_wan_t2v only; "
                        "real Wan 2.1 needs CLIP Text Encode with umT5-XXL. The toy models understand the toy "
                        "world's words: actions (turns their head to the left/right, nods, smiles, opens their "
                        "mouth, blinks, moves across, zooms in/out), backgrounds and lighting.",
            inputs=[io.String.Input("text", multiline=True,
                                    default="a person turns their head to the left in front of a striped wall, "
                                            "in warm evening light",
                                    tooltip="What happens, where and in which light. Say nothing about the person: "
                                            "identity comes from the reference photo.")],
            outputs=[io.Conditioning.Output(display_name="conditioning")])

    @classmethod
    def execute(cls, text):
        from ..moca_model.toy.text import ToyTextEncoder
        return io.NodeOutput([[ToyTextEncoder()(text), {}]])
