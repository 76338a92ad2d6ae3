"""Writes example_workflows/*.json (UI format, for ComfyUI's template browser) and example_workflows/api/*.json (API format)
from the graph definitions below -- the one source of truth for every shipped workflow.

    python scripts/make_workflows.py           # rewrite the files
    python scripts/make_workflows.py --check   # exit 1 if a file is out of date (used by the tests)

Each node: Graph.add(type, widgets=[...], inputs={name: (node, slot)}, title=..., pos=(col, row)).
`widgets` are the node's widget values in its input order, UI-only values included (a seed's
"randomize" / "fixed", LoadImage's "image" upload button), as ComfyUI's front end saves them.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HF = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN_T2V = "wan2.1_t2v_1.3B_fp16.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
ADAPTER = "moca_wan2.1_t2v_1.3B.safetensors"
MODELS = {
    WAN_T2V: {"name": WAN_T2V, "url": f"{HF}/diffusion_models/{WAN_T2V}", "directory": "diffusion_models"},
    UMT5: {"name": UMT5, "url": f"{HF}/text_encoders/{UMT5}", "directory": "text_encoders"},
    WAN_VAE: {"name": WAN_VAE, "url": f"{HF}/vae/{WAN_VAE}", "directory": "vae"},
}
POSITIVE = ("A woman walks along a sunlit beach at golden hour, smiling and looking towards the camera, "
            "hair moving in the wind, cinematic, shallow depth of field")
NEGATIVE = ("blurry, low quality, distorted face, extra limbs, static, overexposed, worst quality, "
            "jpeg artifacts, deformed, text, watermark")
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

# Output types of every node type used below (slot order), for the UI "outputs" lists.
OUTPUTS = {
    "UNETLoader": ["MODEL"], "CLIPLoader": ["CLIP"], "VAELoader": ["VAE"], "CLIPTextEncode": ["CONDITIONING"],
    "LoadImage": ["IMAGE", "MASK"], "KSampler": ["LATENT"], "ModelSamplingSD3": ["MODEL"],
    "DualCFGGuider": ["GUIDER"], "RandomNoise": ["NOISE"], "KSamplerSelect": ["SAMPLER"],
    "BasicScheduler": ["SIGMAS"], "EmptyHunyuanLatentVideo": ["LATENT"], "SamplerCustomAdvanced": ["LATENT", "LATENT"],
    "VAEDecode": ["IMAGE"], "CreateVideo": ["VIDEO"], "SaveVideo": [], "PreviewImage": [], "Note": [],
    "MoCAAdapterLoader": ["MOCA_ADAPTER"], "MoCADiTLoader": ["MODEL", "MOCA_ADAPTER"],
    "MoCAFaceAnalyzerLoader": ["MOCA_FACE_ANALYZER"], "MoCAEncodeFace": ["MOCA_ID", "IMAGE", "STRING"],
    "MoCASaveIdentity": ["STRING"], "MoCALoadIdentity": ["MOCA_ID", "IMAGE", "STRING"],
    "MoCATemporalPooling": ["MOCA_POOLING"], "MoCAExpertMixing": ["MOCA_MIXING"], "MoCAApply": ["MODEL"],
    "MoCAIdentityConditioning": ["CONDITIONING"], "MoCASampler": ["LATENT"], "MoCASaveTextEmbeds": ["STRING"],
    "MoCALoadTextEmbeds": ["CONDITIONING", "STRING"], "MoCAIdentityScore": ["FLOAT", "STRING", "STRING", "IMAGE"],
    "LoraLoaderModelOnly": ["MODEL"], "KSamplerAdvanced": ["LATENT"], "MoCAToyTextEncode": ["CONDITIONING"],
    "MoCAIdentityRegion": ["MOCA_ID"],
}
# Linked input names and their types (in the node's input order), for the UI "inputs" lists.
LINK_INPUTS = {
    "CLIPTextEncode": [("clip", "CLIP")], "KSampler": [("model", "MODEL"), ("positive", "CONDITIONING"),
                                                       ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
    "ModelSamplingSD3": [("model", "MODEL")], "LoraLoaderModelOnly": [("model", "MODEL")],
    "KSamplerAdvanced": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent_image", "LATENT")],
    "DualCFGGuider": [("model", "MODEL"), ("cond1", "CONDITIONING"), ("cond2", "CONDITIONING"), ("negative", "CONDITIONING")],
    "BasicScheduler": [("model", "MODEL")],
    "SamplerCustomAdvanced": [("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                              ("latent_image", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")], "CreateVideo": [("images", "IMAGE"), ("audio", "AUDIO")],
    "SaveVideo": [("video", "VIDEO")], "PreviewImage": [("images", "IMAGE")],
    "MoCAEncodeFace": [("image", "IMAGE"), ("face_analyzer", "MOCA_FACE_ANALYZER"), ("vae", "VAE"),
                       ("image_2", "IMAGE"), ("image_3", "IMAGE"), ("image_4", "IMAGE")],
    "MoCASaveIdentity": [("moca_id", "MOCA_ID")],
    "MoCAApply": [("model", "MODEL"), ("moca_adapter", "MOCA_ADAPTER"), ("moca_id", "MOCA_ID"),
                  ("moca_pooling", "MOCA_POOLING"), ("moca_mixing", "MOCA_MIXING")],
    "MoCAIdentityConditioning": [("conditioning", "CONDITIONING"), ("moca_id", "MOCA_ID")],
    "MoCASampler": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("moca_id", "MOCA_ID")],
    "MoCASaveTextEmbeds": [("conditioning", "CONDITIONING")],
    "MoCAIdentityScore": [("frames", "IMAGE"), ("moca_id", "MOCA_ID"), ("face_analyzer", "MOCA_FACE_ANALYZER")],
    "MoCAIdentityRegion": [("moca_id", "MOCA_ID"), ("mask", "MASK"), ("previous", "MOCA_ID")],
}
# Widget names in input order (UI-only extra values are marked with None), for the API format.
WIDGETS = {
    "UNETLoader": ["unet_name", "weight_dtype"], "CLIPLoader": ["clip_name", "type", "device"],
    "VAELoader": ["vae_name"], "CLIPTextEncode": ["text"], "LoadImage": ["image", None],
    "KSampler": ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "ModelSamplingSD3": ["shift"], "DualCFGGuider": ["cfg_conds", "cfg_cond2_negative", "style"],
    "RandomNoise": ["noise_seed", None], "KSamplerSelect": ["sampler_name"],
    "BasicScheduler": ["scheduler", "steps", "denoise"], "EmptyHunyuanLatentVideo": ["width", "height", "length", "batch_size"],
    "SamplerCustomAdvanced": [], "VAEDecode": [], "CreateVideo": ["fps"],
    "SaveVideo": ["filename_prefix", "format", "codec"], "PreviewImage": [], "Note": [None],
    "MoCAAdapterLoader": ["adapter_name", "weight_dtype"], "MoCADiTLoader": ["ckpt_name", "weight_dtype", "adapter_dtype"],
    "MoCAFaceAnalyzerLoader": ["pack", "provider", "det_size"],
    "MoCAEncodeFace": ["face_select", "face_index", "on_no_face", "fusion", "crop_size"],
    "MoCASaveIdentity": ["filename_prefix"], "MoCALoadIdentity": ["identity_file"],
    "MoCATemporalPooling": ["scale_1", "scale_2", "scale_4", "scale_T"],
    "MoCAExpertMixing": ["identity_strength", "router_temperature", "top_k", "gain_1", "gain_2", "gain_4", "gain_T",
                         "start_percent", "end_percent", "blocks"],
    "MoCAApply": ["apply_to"], "MoCAIdentityConditioning": ["identity"],
    "MoCASampler": ["width", "height", "frames", "steps", "text_cfg", "id_cfg", "shift", "seed", None, "sampler_name",
                    "scheduler", "batch_size"],
    "MoCASaveTextEmbeds": ["filename_prefix", "note"], "MoCALoadTextEmbeds": ["embeds_file"],
    "MoCAIdentityScore": ["threshold"], "MoCAToyTextEncode": ["text"], "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler", "start_at_step",
                         "end_at_step", "return_with_leftover_noise"],
    "MoCAIdentityRegion": ["overlap", "binding"],
}


class Graph:
    def __init__(self, name: str):
        self.name, self.nodes, self.links = name, [], []

    def add(self, type_: str, widgets=(), inputs=None, title=None, pos=(0, 0), models=None, size=None):
        node = {"id": len(self.nodes) + 1, "type": type_, "widgets": list(widgets), "inputs": dict(inputs or {}),
                "title": title, "pos": pos, "models": models, "size": size}
        if len(node["widgets"]) != len(WIDGETS[type_]):
            raise ValueError(f"{self.name}: {type_} needs {len(WIDGETS[type_])} widget values, got {len(node['widgets'])}")
        self.nodes.append(node)
        return node["id"]

    # ------------------------------------------------------------------ UI format
    def ui(self) -> dict:
        nodes, links, out_links = [], [], {}
        for n in self.nodes:
            for name, (src, slot) in n["inputs"].items():
                lid = len(links) + 1
                links.append([lid, src, slot, n["id"], None, None])
                out_links.setdefault((src, slot), []).append(lid)
                n.setdefault("_in", {})[name] = lid
        by_id = {n["id"]: n for n in self.nodes}
        for link in links:
            dst = by_id[link[3]]
            names = [nm for nm, _ in LINK_INPUTS[dst["type"]]]
            name = next(nm for nm, lid in dst["_in"].items() if lid == link[0])
            link[4] = names.index(name)
            link[5] = dict(LINK_INPUTS[dst["type"]])[name]
        for n in self.nodes:
            col, row = n["pos"]
            entry = {"id": n["id"], "type": n["type"], "pos": [40 + 380 * col, 40 + 330 * row],
                     "size": n["size"] or [340, 200], "flags": {}, "order": n["id"] - 1, "mode": 0,
                     "inputs": [{"name": nm, "type": tp, "link": n.get("_in", {}).get(nm)}
                                for nm, tp in LINK_INPUTS.get(n["type"], [])],
                     "outputs": [{"name": tp, "type": tp, "links": out_links.get((n["id"], i), []), "slot_index": i}
                                 for i, tp in enumerate(OUTPUTS[n["type"]])],
                     "properties": {"Node name for S&R": n["type"]},
                     "widgets_values": n["widgets"]}
            if n["type"] == "Note":
                entry["properties"] = {"text": ""}
                entry["color"], entry["bgcolor"] = "#432", "#653"
            if n["title"]:
                entry["title"] = n["title"]
            if n["models"]:
                entry["properties"]["models"] = n["models"]
            nodes.append(entry)
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"moca-comfyui/{self.name}")), "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(links),
                "nodes": nodes, "links": links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4}

    # ------------------------------------------------------------------ API format
    def api(self) -> dict:
        prompt = {}
        for n in self.nodes:
            if n["type"] in FRONTEND_ONLY:
                continue
            inputs = {name: v for name, v in zip(WIDGETS[n["type"]], n["widgets"]) if name is not None}
            inputs.update({name: [str(src), slot] for name, (src, slot) in n["inputs"].items()})
            prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                    "_meta": {"title": n["title"] or n["type"]}}
        return prompt


def note(g: Graph, text: str):
    g.add("Note", [text], pos=(-1.2, 0), size=[420, 640], title="Read me: model files")


MODEL_NOTE = f"""MoCA for ComfyUI - files this workflow needs (put each in the ComfyUI folder shown):

models/diffusion_models/{WAN_T2V}
models/text_encoders/{UMT5}
models/vae/{WAN_VAE}
  (all three: Comfy-Org/Wan_2.1_ComfyUI_repackaged on Hugging Face)
models/insightface/models/antelopev2/  (scrfd_10g_bnkps.onnx + glintr100.onnx; buffalo_l also works)
models/moca/{ADAPTER}
  NO OFFICIAL MoCA WEIGHTS EXIST (the paper released none). Train an adapter with train_moca.py
  (see the README) and put the .safetensors file in models/moca (or a 'moca:' folder in
  extra_model_paths.yaml). An untrained adapter gives exactly the base Wan video.
input/: your reference face photo (select it in Load Image).
"""


def wan_loaders(g: Graph):
    """The core Wan 2.1 loaders (diffusion model, umT5, VAE) in column 0, with their download entries."""
    unet = g.add("UNETLoader", [WAN_T2V, "default"], pos=(0, 1), models=[MODELS[WAN_T2V]])
    clip = g.add("CLIPLoader", [UMT5, "wan", "default"], pos=(0, 2), models=[MODELS[UMT5]])
    vae = g.add("VAELoader", [WAN_VAE], pos=(0, 3), models=[MODELS[WAN_VAE]])
    return unet, clip, vae


def prompts(g: Graph, clip, col: int, row: int):
    """Positive and negative CLIPTextEncode nodes, one above the other."""
    pos = g.add("CLIPTextEncode", [POSITIVE], pos=(col, row), inputs={"clip": (clip, 0)}, title="Positive prompt")
    neg = g.add("CLIPTextEncode", [NEGATIVE], pos=(col, row + 1), inputs={"clip": (clip, 0)}, title="Negative prompt")
    return pos, neg


def basic() -> Graph:
    g = Graph("moca_t2v_face_basic")
    note(g, MODEL_NOTE)
    unet, clip, vae = wan_loaders(g)
    img = g.add("LoadImage", ["face.png", "image"], pos=(1, 0), title="Reference face")
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(1, 1))
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 256], pos=(1, 2),
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    g.add("PreviewImage", [], pos=(1, 3), inputs={"images": (enc, 1)}, title="Aligned face (check it)")
    ada = g.add("MoCAAdapterLoader", [ADAPTER, "default"], pos=(2, 0))
    app = g.add("MoCAApply", ["all"], pos=(2, 1), inputs={"model": (unet, 0), "moca_adapter": (ada, 0), "moca_id": (enc, 0)})
    pos, neg = prompts(g, clip, col=2, row=2)
    smp = g.add("MoCASampler", [832, 480, 33, 30, 5.0, 2.0, 0.0, 42, "randomize", "uni_pc", "simple", 1], pos=(3, 1),
                inputs={"model": (app, 0), "positive": (pos, 0), "negative": (neg, 0)}, size=[340, 380])
    dec = g.add("VAEDecode", [], pos=(4, 1), inputs={"samples": (smp, 0), "vae": (vae, 0)})
    vid = g.add("CreateVideo", [16.0], pos=(4, 2), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA", "auto", "auto"], pos=(5, 1), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


DISTILL_LORA = "wan2.1_t2v_1.3B_distill_lora.safetensors"


def distilled() -> Graph:
    g = Graph("moca_t2v_distilled_few_steps")
    note(g, MODEL_NOTE + f"""models/loras/{DISTILL_LORA}
  any step-distilled speed-up LoRA for Wan 2.1 T2V 1.3B (CausVid, lightx2v, ...): pick yours in the LoRA
  loader. Distilled models sample in 4-8 steps at cfg 1: there is no negative pass, so MoCA Sampler's
  text_cfg 1 with id_cfg 2 costs exactly one extra model pass per step (text vs text + identity); id_cfg 1
  costs none. The LoRA and MoCA Apply commute: either order gives the same model.""")
    unet, clip, vae = wan_loaders(g)
    lora = g.add("LoraLoaderModelOnly", [DISTILL_LORA, 1.0], pos=(1, 0), inputs={"model": (unet, 0)},
                 title="Distilled speed-up LoRA")
    img = g.add("LoadImage", ["face.png", "image"], pos=(1, 1), title="Reference face")
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(1, 2))
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 256], pos=(1, 3),
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    ada = g.add("MoCAAdapterLoader", [ADAPTER, "default"], pos=(2, 0))
    app = g.add("MoCAApply", ["all"], pos=(2, 1), inputs={"model": (lora, 0), "moca_adapter": (ada, 0), "moca_id": (enc, 0)})
    pos, neg = prompts(g, clip, col=2, row=2)
    smp = g.add("MoCASampler", [832, 480, 33, 6, 1.0, 2.0, 8.0, 42, "randomize", "euler", "simple", 1], pos=(3, 1),
                inputs={"model": (app, 0), "positive": (pos, 0), "negative": (neg, 0)}, size=[340, 380],
                title="MoCA Sampler (6 steps, cfg 1)")
    dec = g.add("VAEDecode", [], pos=(4, 1), inputs={"samples": (smp, 0), "vae": (vae, 0)})
    vid = g.add("CreateVideo", [16.0], pos=(4, 2), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_fast", "auto", "auto"], pos=(5, 1), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


WAN22_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
WAN22_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
ADAPTER_A14B_HIGH = "moca_wan2.2-a14b-high-noise.safetensors"
ADAPTER_A14B_LOW = "moca_wan2.2-a14b-low-noise.safetensors"


def wan22() -> Graph:
    g = Graph("moca_t2v_wan22_a14b")
    note(g, f"""MoCA for ComfyUI - Wan 2.2 T2V A14B (two experts). Files (ComfyUI folder shown):

models/diffusion_models/{WAN22_HIGH}
models/diffusion_models/{WAN22_LOW}
  (Comfy-Org/Wan_2.2_ComfyUI_Repackaged on Hugging Face)
models/text_encoders/{UMT5}, models/vae/{WAN_VAE}  (the Wan 2.1 ones)
models/insightface/models/antelopev2/
models/moca/{ADAPTER_A14B_HIGH} and {ADAPTER_A14B_LOW}
  One adapter per expert, as train_moca.py makes them (configs/train_wan2.2-a14b-high-noise.yaml and
  -low-noise.yaml): each expert samples only its part of the schedule and has its own features, so each
  adapter trains on its expert and its share of the sigmas. NO OFFICIAL MoCA WEIGHTS EXIST: train them with
  train_moca.py (a Wan 2.1 14B adapter also loads on both experts, untuned for either).
The high-noise expert runs the first steps (composition, where identity is set), the low-noise expert
the rest; the switch at step 10 of 20 is about where Wan 2.2 switches for T2V (sigma 0.875, shift 8). To keep identity off the
  detail steps, set MoCA Expert Mixing on the low-noise side or bypass its MoCA Apply.""")
    high = g.add("UNETLoader", [WAN22_HIGH, "default"], pos=(0, 1), title="High-noise expert",
                 models=[{"name": WAN22_HIGH, "directory": "diffusion_models",
                          "url": "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/"
                                 f"diffusion_models/{WAN22_HIGH}"}])
    low = g.add("UNETLoader", [WAN22_LOW, "default"], pos=(0, 2), title="Low-noise expert",
                models=[{"name": WAN22_LOW, "directory": "diffusion_models",
                         "url": "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/"
                                f"diffusion_models/{WAN22_LOW}"}])
    clip = g.add("CLIPLoader", [UMT5, "wan", "default"], pos=(0, 3), models=[MODELS[UMT5]])
    vae = g.add("VAELoader", [WAN_VAE], pos=(0, 4), models=[MODELS[WAN_VAE]])
    img = g.add("LoadImage", ["face.png", "image"], pos=(1, 0), title="Reference face")
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(1, 1))
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 256], pos=(1, 2),
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    ada_h = g.add("MoCAAdapterLoader", [ADAPTER_A14B_HIGH, "default"], pos=(1, 3), title="MoCA adapter (high-noise)")
    ada_l = g.add("MoCAAdapterLoader", [ADAPTER_A14B_LOW, "default"], pos=(1, 4), title="MoCA adapter (low-noise)")
    app_h = g.add("MoCAApply", ["all"], pos=(2, 0), inputs={"model": (high, 0), "moca_adapter": (ada_h, 0), "moca_id": (enc, 0)},
                  title="MoCA Apply (high-noise)")
    app_l = g.add("MoCAApply", ["all"], pos=(2, 1), inputs={"model": (low, 0), "moca_adapter": (ada_l, 0), "moca_id": (enc, 0)},
                  title="MoCA Apply (low-noise)")
    shf_h = g.add("ModelSamplingSD3", [8.0], pos=(2, 2), inputs={"model": (app_h, 0)})
    shf_l = g.add("ModelSamplingSD3", [8.0], pos=(2, 3), inputs={"model": (app_l, 0)})
    pos, neg = prompts(g, clip, col=3, row=0)
    lat = g.add("EmptyHunyuanLatentVideo", [832, 480, 33, 1], pos=(3, 2))
    k1 = g.add("KSamplerAdvanced", ["enable", 42, "randomize", 20, 3.5, "euler", "simple", 0, 10, "enable"], pos=(4, 0),
               inputs={"model": (shf_h, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (lat, 0)},
               title="Stage 1: high-noise expert (steps 0-10)", size=[340, 380])
    k2 = g.add("KSamplerAdvanced", ["disable", 0, "fixed", 20, 3.5, "euler", "simple", 10, 10000, "disable"], pos=(5, 0),
               inputs={"model": (shf_l, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (k1, 0)},
               title="Stage 2: low-noise expert (steps 10-20)", size=[340, 380])
    dec = g.add("VAEDecode", [], pos=(6, 0), inputs={"samples": (k2, 0), "vae": (vae, 0)})
    vid = g.add("CreateVideo", [16.0], pos=(6, 1), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_wan22", "auto", "auto"], pos=(7, 0), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


def dual_guidance() -> Graph:
    g = Graph("moca_t2v_dual_guidance")
    note(g, MODEL_NOTE + "\nDual guidance: DualCFGGuider's cond1 = prompt WITH identity, cond2 = the same prompt "
            "WITHOUT identity, negative = negative prompt. cfg_conds scales identity, cfg_cond2_negative scales "
            "text. MoCA Apply uses apply_to = 'marked conditioning only'.")
    unet, clip, vae = wan_loaders(g)
    img = g.add("LoadImage", ["face.png", "image"], pos=(1, 0), title="Reference face")
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(1, 1))
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 256], pos=(1, 2),
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    ada = g.add("MoCAAdapterLoader", [ADAPTER, "default"], pos=(1, 3))
    pool = g.add("MoCATemporalPooling", [True, True, True, True], pos=(2, 0), size=[340, 280])
    mix = g.add("MoCAExpertMixing", [1.0, 1.0, 0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.9, "all"], pos=(2, 1), size=[340, 300])
    app = g.add("MoCAApply", ["marked conditioning only"], pos=(2, 2),
                inputs={"model": (unet, 0), "moca_adapter": (ada, 0), "moca_id": (enc, 0),
                        "moca_pooling": (pool, 0), "moca_mixing": (mix, 0)})
    shf = g.add("ModelSamplingSD3", [8.0], pos=(2, 3), inputs={"model": (app, 0)})
    pos, neg = prompts(g, clip, col=3, row=0)
    c1 = g.add("MoCAIdentityConditioning", ["with identity"], pos=(3, 2), inputs={"conditioning": (pos, 0)},
               title="cond1: text + identity")
    c2 = g.add("MoCAIdentityConditioning", ["without identity"], pos=(3, 3), inputs={"conditioning": (pos, 0)},
               title="cond2: text only")
    gd = g.add("DualCFGGuider", [2.0, 5.0, "regular"], pos=(4, 0),
               inputs={"model": (shf, 0), "cond1": (c1, 0), "cond2": (c2, 0), "negative": (neg, 0)})
    noise = g.add("RandomNoise", [42, "randomize"], pos=(4, 1))
    sel = g.add("KSamplerSelect", ["uni_pc"], pos=(4, 2))
    sch = g.add("BasicScheduler", ["simple", 30, 1.0], pos=(4, 3), inputs={"model": (shf, 0)})
    lat = g.add("EmptyHunyuanLatentVideo", [832, 480, 33, 1], pos=(5, 0))
    sca = g.add("SamplerCustomAdvanced", [], pos=(5, 1),
                inputs={"noise": (noise, 0), "guider": (gd, 0), "sampler": (sel, 0), "sigmas": (sch, 0),
                        "latent_image": (lat, 0)})
    dec = g.add("VAEDecode", [], pos=(5, 2), inputs={"samples": (sca, 0), "vae": (vae, 0)})
    vid = g.add("CreateVideo", [16.0], pos=(5, 3), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_dual", "auto", "auto"], pos=(6, 1), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


def fuse_references() -> Graph:
    g = Graph("moca_identity_from_several_photos")
    note(g, f"""MoCA: fuse several reference photos into one identity file.

Files: models/vae/{WAN_VAE} (Comfy-Org/Wan_2.1_ComfyUI_repackaged)
models/insightface/models/antelopev2/ (scrfd_10g_bnkps.onnx + glintr100.onnx)
input/: face.png, face_2.png, face_3.png (your photos of the same person).
The identity is saved to output/moca_identities/; load it later with MoCA Load Identity
(no detector or VAE needed then). A photo without a face stops with an error naming it;
set on_no_face to 'skip' to leave such photos out.""")
    vae = g.add("VAELoader", [WAN_VAE], pos=(0, 1), models=[MODELS[WAN_VAE]])
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(0, 2))
    imgs = [g.add("LoadImage", [f, "image"], pos=(1, i), title=f"Reference {i + 1}")
            for i, f in enumerate(["face.png", "face_2.png", "face_3.png"])]
    enc = g.add("MoCAEncodeFace", ["largest", 0, "skip", "mean", 256], pos=(2, 1),
                inputs={"image": (imgs[0], 0), "image_2": (imgs[1], 0), "image_3": (imgs[2], 0),
                        "face_analyzer": (ana, 0), "vae": (vae, 0)})
    g.add("MoCASaveIdentity", ["identity"], pos=(3, 0), inputs={"moca_id": (enc, 0)})
    g.add("PreviewImage", [], pos=(3, 1), inputs={"images": (enc, 1)}, title="Aligned faces")
    return g


def likeness_qa() -> Graph:
    g = Graph("moca_likeness_qa")
    note(g, MODEL_NOTE + "\nIdentity from a saved file (MoCA Load Identity: output/moca_identities or "
            "models/moca_identities). This graph uses the core KSampler: with apply_to 'all' the identity acts on "
            "positive and negative alike. MoCA Identity Score plots the ArcFace likeness of every frame.")
    unet, clip, vae = wan_loaders(g)
    ident = g.add("MoCALoadIdentity", ["identity_00001_.safetensors"], pos=(1, 0))
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "auto", 640], pos=(1, 1))
    ada = g.add("MoCAAdapterLoader", [ADAPTER, "default"], pos=(1, 2))
    app = g.add("MoCAApply", ["all"], pos=(2, 0), inputs={"model": (unet, 0), "moca_adapter": (ada, 0), "moca_id": (ident, 0)})
    shf = g.add("ModelSamplingSD3", [8.0], pos=(2, 1), inputs={"model": (app, 0)})
    pos, neg = prompts(g, clip, col=2, row=2)
    lat = g.add("EmptyHunyuanLatentVideo", [832, 480, 33, 1], pos=(3, 0))
    ks = g.add("KSampler", [42, "randomize", 30, 6.0, "uni_pc", "simple", 1.0], pos=(3, 1),
               inputs={"model": (shf, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (lat, 0)})
    dec = g.add("VAEDecode", [], pos=(4, 0), inputs={"samples": (ks, 0), "vae": (vae, 0)})
    g.add("MoCAIdentityScore", [0.4], pos=(4, 1), inputs={"frames": (dec, 0), "moca_id": (ident, 0), "face_analyzer": (ana, 0)})
    vid = g.add("CreateVideo", [16.0], pos=(4, 2), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_qa", "auto", "auto"], pos=(5, 1), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


# The toy world's template: the pack's own trained toy models (toy_models/, moca_model/toy), on a CPU.
TOY_DIT = "toy_wan_t2v.safetensors"
TOY_VAE = "toy_wan_vae.safetensors"
TOY_ADAPTER = "toy_moca_adapter.safetensors"
TOY_FACE = "moca_toy_person_100000.png"
TOY_PROMPT = "a person turns their head to the left in front of a striped wall, in warm evening light"
TOY_NOTE = f"""MoCA toy world - runs on a CPU in about a minute, with nothing to download.

Every model here was trained by this pack on a world it generates (cartoon people in 17-frame 128x128
clips; see docs/toy_world.md): {TOY_DIT}, {TOY_VAE}, {TOY_ADAPTER} and the 'toyface' face pack ship
in the pack's toy_models/ folder and are listed automatically. The reference photos
moca_toy_person_1000xx.png (held-out people no model trained on) are copied into input/.

Needs ComfyUI 0.8.0 or newer: older ComfyUI builds every Wan VAE at full width and Load VAE fails with
'size mismatch' on the narrow toy VAE (the pack prints a notice at start-up).

The toy models know only the toy world's words: actions (turns their head to the left / right, nods,
smiles, opens their mouth, blinks, moves across, zooms in / out), backgrounds (a striped wall, a sandy beach
by the sea, a night sky, ...) and light (bright daylight, warm evening light, dim light, cool blue light).
Say nothing about the person: identity comes from the photo. Set identity_strength (MoCA Expert Mixing)
to 0 to see the same seed without identity.
"""


def toy() -> Graph:
    g = Graph("moca_toy_world_cpu")
    g.add("Note", [TOY_NOTE], pos=(-1.2, 0), size=[420, 640], title="Read me: the toy world")
    unet = g.add("UNETLoader", [TOY_DIT, "default"], pos=(0, 0))
    vae = g.add("VAELoader", [TOY_VAE], pos=(0, 1))
    img = g.add("LoadImage", [TOY_FACE, "image"], pos=(0, 2), title="Reference face (a held-out toy person)")
    ana = g.add("MoCAFaceAnalyzerLoader", ["toyface", "cpu", 640], pos=(1, 0))
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 128], pos=(1, 1),
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    g.add("PreviewImage", [], pos=(1, 2), inputs={"images": (enc, 1)}, title="Aligned face (check it)")
    ada = g.add("MoCAAdapterLoader", [TOY_ADAPTER, "default"], pos=(2, 0))
    mix = g.add("MoCAExpertMixing", [1.0, 1.0, 0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, "all"], pos=(2, 1), size=[340, 380])
    shift = g.add("ModelSamplingSD3", [3.0], pos=(0, 3), inputs={"model": (unet, 0)}, title="Shift 3 (what the toy model was sampled with)")
    app = g.add("MoCAApply", ["all"], pos=(2, 2), inputs={"model": (shift, 0), "moca_adapter": (ada, 0),
                                                          "moca_id": (enc, 0), "moca_mixing": (mix, 0)})
    pos = g.add("MoCAToyTextEncode", [TOY_PROMPT], pos=(3, 0), title="Prompt (toy words)")
    neg = g.add("MoCAToyTextEncode", [""], pos=(3, 1), title="Negative (empty)")
    smp = g.add("MoCASampler", [128, 128, 17, 20, 5.0, 2.0, 0.0, 0, "fixed", "dpmpp_2m", "simple", 1], pos=(3, 2),
                inputs={"model": (app, 0), "positive": (pos, 0), "negative": (neg, 0)}, size=[340, 380])
    dec = g.add("VAEDecode", [], pos=(4, 0), inputs={"samples": (smp, 0), "vae": (vae, 0)})
    g.add("MoCAIdentityScore", [0.4], pos=(4, 1), inputs={"frames": (dec, 0), "moca_id": (enc, 0),
                                                          "face_analyzer": (ana, 0)})
    vid = g.add("CreateVideo", [8.0], pos=(4, 2), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_toy", "auto", "auto"], pos=(5, 0), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


# Two people in one toy video: each identity bound to its place in the frame (MoCA Identity Region).
TOY_FACE_2 = "moca_toy_person_100001.png"
TOY_TWO_DIT = "toy_wan_t2v_two_people.safetensors"          # the toy pair fine-tuned on two-person clips
TOY_TWO_ADAPTER = "toy_moca_two_people_adapter.safetensors"
TOY_TWO_PROMPT = "two people smile, in warm evening light, against a plain teal wall"
TOY_TWO_NOTE = f"""MoCA toy world - two people, two faces (runs on a CPU, nothing to download).

Each reference photo is encoded, then bound to a region by a MoCA Identity Region node: the two nodes are
chained (previous -> next) and the last one goes to MoCA Apply's moca_id. Video tokens inside a region attend
only to that region's identity; outside every region there is no identity at all.

No mask is connected here, so the people are bound left to right in chain order: the first node is the person
on the left half of the frame, the second the right half (the toy world's two-person clips put one person in
each half). Connect a MASK (one, or one per frame; white = this person) to a region node to place a person
exactly. Set 'binding' on the last region node to 'concat (naive baseline)' to see the naive approach (both
identities everywhere). MoCA Identity Score reports each person's likeness to its own photo and to the other's,
the swap rate and the blend rate.

Models: {TOY_TWO_DIT} with {TOY_TWO_ADAPTER} (the toy pair fine-tuned on two-person clips, half of them
bound left to right without masks), {TOY_VAE} and the 'toyface' pack, all from the pack's toy_models/ folder.
Needs ComfyUI 0.8.0 or newer (the narrow toy VAE).
"""


def toy_two() -> Graph:
    g = Graph("moca_toy_two_people_cpu")
    g.add("Note", [TOY_TWO_NOTE], pos=(-1.2, 0), size=[420, 640], title="Read me: two people")
    unet = g.add("UNETLoader", [TOY_TWO_DIT, "default"], pos=(0, 0))
    vae = g.add("VAELoader", [TOY_VAE], pos=(0, 1))
    ana = g.add("MoCAFaceAnalyzerLoader", ["toyface", "cpu", 640], pos=(0, 2))
    shift = g.add("ModelSamplingSD3", [3.0], pos=(0, 3), inputs={"model": (unet, 0)}, title="Shift 3 (what the toy model was sampled with)")
    regions = []
    for k, face in enumerate((TOY_FACE, TOY_FACE_2)):
        side = ("left", "right")[k]
        img = g.add("LoadImage", [face, "image"], pos=(1, 2 * k), title=f"Person {k + 1} ({side}): reference photo")
        enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 128], pos=(2, 2 * k),
                    inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
        links = {"moca_id": (enc, 0)}
        if regions:
            links["previous"] = (regions[-1], 0)
        regions.append(g.add("MoCAIdentityRegion", ["largest", "regions"], pos=(2, 2 * k + 1), inputs=links,
                             title=f"Person {k + 1}: the {side} of the frame (no mask: left to right)"))
    ada = g.add("MoCAAdapterLoader", [TOY_TWO_ADAPTER, "default"], pos=(3, 0))
    mix = g.add("MoCAExpertMixing", [1.0, 1.0, 0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, "all"], pos=(3, 1), size=[340, 380])
    app = g.add("MoCAApply", ["all"], pos=(3, 2), inputs={"model": (shift, 0), "moca_adapter": (ada, 0),
                                                          "moca_id": (regions[-1], 0), "moca_mixing": (mix, 0)})
    pos = g.add("MoCAToyTextEncode", [TOY_TWO_PROMPT], pos=(4, 0), title="Prompt (toy words)")
    neg = g.add("MoCAToyTextEncode", [""], pos=(4, 1), title="Negative (empty)")
    smp = g.add("MoCASampler", [128, 128, 17, 20, 5.0, 2.0, 0.0, 0, "fixed", "dpmpp_2m", "simple", 1], pos=(4, 2),
                inputs={"model": (app, 0), "positive": (pos, 0), "negative": (neg, 0)}, size=[340, 380])
    dec = g.add("VAEDecode", [], pos=(5, 0), inputs={"samples": (smp, 0), "vae": (vae, 0)})
    g.add("MoCAIdentityScore", [0.4], pos=(5, 1), inputs={"frames": (dec, 0), "moca_id": (regions[-1], 0),
                                                          "face_analyzer": (ana, 0)})
    vid = g.add("CreateVideo", [8.0], pos=(5, 2), inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["video/MoCA_toy_two", "auto", "auto"], pos=(6, 0), inputs={"video": (vid, 0)}, size=[400, 420])
    return g


# The CPU smoke test (run headless by tests/test_comfy_server.py on tiny random models the test builds).
SMOKE_DIT = "moca_tiny_dit.safetensors"
SMOKE_VAE = "moca_tiny_test_vae.safetensors"
SMOKE_POS, SMOKE_NEG = "smoke_positive.safetensors", "smoke_negative.safetensors"
SMOKE_FACE = "moca_smoke_face.png"


def smoke() -> Graph:
    g = Graph("moca_smoke_cpu")
    dit = g.add("MoCADiTLoader", [SMOKE_DIT, "default", "default"])
    vae = g.add("VAELoader", [SMOKE_VAE])
    img = g.add("LoadImage", [SMOKE_FACE, "image"])
    ana = g.add("MoCAFaceAnalyzerLoader", ["antelopev2", "cpu", 640])
    enc = g.add("MoCAEncodeFace", ["largest", 0, "error", "mean", 256],
                inputs={"image": (img, 0), "face_analyzer": (ana, 0), "vae": (vae, 0)})
    pos = g.add("MoCALoadTextEmbeds", [SMOKE_POS])
    neg = g.add("MoCALoadTextEmbeds", [SMOKE_NEG])
    pool = g.add("MoCATemporalPooling", [True, True, True, True])
    mix = g.add("MoCAExpertMixing", [1.0, 1.0, 0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, "all"])
    app = g.add("MoCAApply", ["all"], inputs={"model": (dit, 0), "moca_adapter": (dit, 1), "moca_id": (enc, 0),
                                              "moca_pooling": (pool, 0), "moca_mixing": (mix, 0)})
    smp = g.add("MoCASampler", [64, 64, 5, 2, 3.0, 1.5, 0.0, 7, "fixed", "euler", "simple", 1],
                inputs={"model": (app, 0), "positive": (pos, 0), "negative": (neg, 0)})
    dec = g.add("VAEDecode", [], inputs={"samples": (smp, 0), "vae": (vae, 0)})
    vid = g.add("CreateVideo", [8.0], inputs={"images": (dec, 0)})
    g.add("SaveVideo", ["moca_smoke/video", "mp4", "h264"], inputs={"video": (vid, 0)})
    g.add("MoCASaveIdentity", ["moca_smoke/identity"], inputs={"moca_id": (enc, 0)})
    return g


UI_GRAPHS = (basic, distilled, wan22, dual_guidance, fuse_references, likeness_qa, toy, toy_two)


def outputs() -> dict[Path, dict]:
    files = {ROOT / "example_workflows" / f"{g().name}.json": g().ui() for g in UI_GRAPHS}
    files[ROOT / "example_workflows" / "api" / "moca_smoke_cpu_api.json"] = smoke().api()
    files[ROOT / "example_workflows" / "api" / "moca_toy_world_cpu_api.json"] = toy().api()
    files[ROOT / "example_workflows" / "api" / "moca_toy_two_people_cpu_api.json"] = toy_two().api()
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    a = ap.parse_args(argv)
    stale = []
    for path, data in outputs().items():
        text = json.dumps(data, indent=2) + "\n"
        if a.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python scripts/make_workflows.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
