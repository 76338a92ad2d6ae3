"""Loaders: MoCA adapter, combined MoCA-DiT checkpoint, face analyzer."""
from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

import comfy.sd
import folder_paths

from ..moca_model.checkpoint import CheckpointError, read_moca
from . import paths
from .logic import check_choices, require_choices
from .adapter import WEIGHT_DTYPES as ADAPTER_WEIGHT_DTYPES, build_adapter_patcher
from .types import MocaAdapter, MocaFaceAnalyzer

WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
ADAPTER_DTYPES = list(ADAPTER_WEIGHT_DTYPES)


def adapter_dtype_input(name: str):
    return io.Combo.Input(name, options=ADAPTER_DTYPES, default="default", optional=True,   # optional: older graphs
                          tooltip="Storage dtype of the MoCA adapter's weights. 'default' follows ComfyUI's rule for "
                                  "the Wan model (half precision on a GPU, fp32 on the CPU; --fp16-unet etc. apply), "
                                  "whatever the file holds; fp8 halves it again (weights are cast on the fly).")


PROVIDERS = ["auto", "cuda", "cpu", "tensorrt", "rocm", "migraphx", "directml", "coreml", "openvino"]


def _moca_file(input_name: str, name: str):
    path = folder_paths.get_full_path("moca", name)
    if path is None:
        roots = ", ".join(folder_paths.get_folder_paths("moca"))
        raise FileNotFoundError(f"input '{input_name}': {name!r} is not in the MoCA model folders ({roots}). "
                                "Put the .safetensors file there (or add a 'moca:' entry to extra_model_paths.yaml) "
                                "and press R in ComfyUI to refresh the list.")
    try:
        return path, read_moca(path)
    except CheckpointError as e:
        raise CheckpointError(f"input '{input_name}': {e}") from e


class MoCAAdapterLoader(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, adapter_name):
        return check_choices('MoCA Adapter Loader', adapter_name=(adapter_name, paths.moca_files()))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAAdapterLoader", display_name="MoCA Adapter Loader", category="MoCA/loaders",
            description="Loads a MoCA identity adapter (every block's mixture of cross-attention experts and the "
                        "identity tokenizer) from models/moca. Combine it with a native Wan 2.1 T2V model in MoCA Apply. "
                        "ComfyUI's model manager loads and offloads it together with the model.",
            inputs=[io.Combo.Input("adapter_name", options=paths.moca_files(),
                                   tooltip="A .safetensors MoCA adapter (or combined MoCA-DiT file, whose adapter part "
                                           "is used) in models/moca or a 'moca:' folder of extra_model_paths.yaml."),
                    adapter_dtype_input("weight_dtype")],
            outputs=[MocaAdapter.Output(display_name="moca_adapter",
                                        tooltip="The adapter, for MoCA Apply (and MoCA Encode Face tokens).")])

    @classmethod
    def execute(cls, adapter_name, weight_dtype="default"):
        require_choices('MoCA Adapter Loader', weight_dtype=(weight_dtype, ADAPTER_DTYPES))
        _, f = _moca_file("adapter_name", adapter_name)
        return io.NodeOutput(build_adapter_patcher(f.config, f.adapter_state, os.path.basename(adapter_name),
                                                   weight_dtype, f.recognizer))


class MoCADiTLoader(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, ckpt_name):
        return check_choices('MoCA-DiT Loader', ckpt_name=(ckpt_name, paths.moca_files()))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCADiTLoader", display_name="MoCA-DiT Loader", category="MoCA/loaders",
            description="Loads a combined MoCA-DiT checkpoint (Wan 2.1 T2V backbone + MoCA adapter in one file, as "
                        "train_moca.py writes it). The backbone goes through ComfyUI's own diffusion-model loader, so "
                        "it is the native Wan model with all its optimisations; the adapter comes out separately.",
            inputs=[io.Combo.Input("ckpt_name", options=paths.moca_files(),
                                   tooltip="A combined MoCA-DiT .safetensors file in models/moca."),
                    io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default",
                                   tooltip="Storage dtype of the backbone weights, as in Load Diffusion Model "
                                           "(fp8 halves memory; 'default' keeps the file's dtype)."),
                    adapter_dtype_input("adapter_dtype")],
            outputs=[io.Model.Output(display_name="model", tooltip="The native Wan 2.1 T2V model (no MoCA yet)."),
                     MocaAdapter.Output(display_name="moca_adapter", tooltip="The MoCA adapter, for MoCA Apply.")])

    @classmethod
    def execute(cls, ckpt_name, weight_dtype, adapter_dtype="default"):
        require_choices('MoCA-DiT Loader', weight_dtype=(weight_dtype, WEIGHT_DTYPES),
                        adapter_dtype=(adapter_dtype, ADAPTER_DTYPES))
        _, f = _moca_file("ckpt_name", ckpt_name)
        if f.backbone_state is None:
            raise ValueError(f"input 'ckpt_name': {ckpt_name} is an adapter-only file; load it with MoCA Adapter Loader "
                             "and the Wan model with Load Diffusion Model.")
        options = {}
        if weight_dtype.startswith("fp8_e4m3fn"):
            options["dtype"] = torch.float8_e4m3fn
            if weight_dtype.endswith("_fast"):
                options["fp8_optimizations"] = True
        elif weight_dtype == "fp8_e5m2":
            options["dtype"] = torch.float8_e5m2
        model = comfy.sd.load_diffusion_model_state_dict(dict(f.backbone_state), model_options=options)
        if model is None:
            raise ValueError(f"input 'ckpt_name': ComfyUI could not recognise the backbone of {ckpt_name} as a Wan model.")
        return io.NodeOutput(model, build_adapter_patcher(f.config, f.adapter_state, os.path.basename(ckpt_name),
                                                          adapter_dtype, f.recognizer))


class MoCAFaceAnalyzerLoader(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, provider):
        return check_choices('MoCA Face Analyzer Loader', provider=(provider, PROVIDERS))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAFaceAnalyzerLoader", display_name="MoCA Face Analyzer Loader", category="MoCA/loaders",
            description="Loads an insightface model pack (face detector + ArcFace recogniser) from "
                        "models/insightface/models/<pack>/ - the folder PuLID / InstantID / IPAdapter use - on an "
                        "onnxruntime provider. Nothing is downloaded; a missing pack gives an error listing the files.",
            inputs=[io.Combo.Input("pack", options=paths.insightface_packs(), default="antelopev2",
                                   tooltip="insightface pack folder name (antelopev2 recommended, buffalo_l accepted; any "
                                           "other pack with a moca_pack.json manifest). Use the pack the MoCA adapter "
                                           "was trained with: MoCA Apply refuses identities of another recogniser."),
                    io.Combo.Input("provider", options=PROVIDERS, default="auto",
                                   tooltip="onnxruntime execution provider. 'auto' uses the GPU when its provider "
                                           "really loads, else the CPU, and reports which one ran."),
                    io.Int.Input("det_size", default=640, min=64, max=2048, step=32,
                                 tooltip="Detector input size in pixels (multiple of 32). 640 is usual; smaller finds "
                                         "faces that fill the frame.")],
            outputs=[MocaFaceAnalyzer.Output(display_name="face_analyzer",
                                             tooltip="Face detector + ArcFace, for MoCA Encode Face / Identity Score.")])

    @classmethod
    def execute(cls, pack, provider, det_size):
        from ..moca_model.face import FaceAnalyzer, FacePackError
        roots = paths.insightface_roots()
        errors = []
        for root in roots:
            try:
                analyzer = FaceAnalyzer.load(root, pack=pack, provider=provider, det_size=det_size)
                break
            except FacePackError as e:
                errors.append(str(e))
        else:
            raise FacePackError(f"input 'pack': {pack} was not found in any insightface folder "
                                f"({', '.join(roots)}).\n" + "\n".join(errors))
        logging.info("MoCA face analyzer: %s", analyzer.report)
        return io.NodeOutput(analyzer)
