"""Model building for the trainer: the MoCADiT (+ LoRA) with its weights, trainable set and dtypes, the LVPL
extractor and the empty-prompt states."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import MoCAConfig
from ..dit import MoCADiT
from .config import DTYPES, TrainConfig
from .lvpl import LatentVideoPerceptualLoss, build_extractor
from .objective import MoCATrainModule


def make_module(c: TrainConfig, mc: MoCAConfig, device) -> MoCATrainModule:
    """MoCADiT (+ LoRA) with weights (backbone file or seeded random init, fresh or given adapter), the
    trainable set marked and dtypes applied, on `device` ("meta" = shapes only, no weights)."""
    device = torch.device(device)
    meta = device.type == "meta"
    torch.manual_seed(c.train.seed)                       # same random init on every rank
    if meta:
        dit = MoCADiT(mc, device="meta")
    elif c.model.backbone:
        from ..adapter import MoCAAdapter
        from ..checkpoint import check_state_dict, normalize_wan_keys, read_safetensors
        sd, _ = read_safetensors(c.model.backbone)
        sd = normalize_wan_keys(sd)
        dit = MoCADiT(mc, device="meta")
        check_state_dict(dit.backbone_state_dict(), sd, f"{Path(c.model.backbone).name} (Wan 2.1 backbone)")
        adapter = MoCAAdapter(mc).init_weights()
        dit.load_state_dict({**sd, **{"adapter." + k: v for k, v in adapter.state_dict().items()}},
                            assign=True, strict=True)
    else:
        dit = MoCADiT(mc)
    if c.model.adapter_init and not meta:
        from ..checkpoint import read_moca
        f = read_moca(c.model.adapter_init)
        if f.config != mc:
            from ..variants import variant_of
            raise ValueError(f"model.adapter_init {c.model.adapter_init} was made for another MoCA config "
                             f"({variant_of(f.config)}, moca_dim {f.config.moca_dim}) than this run builds "
                             f"({variant_of(mc)}, moca_dim {mc.moca_dim}); set model.variant (moca: MoCA as "
                             "designed) / model.preset / model.overrides to match it")
        dit.adapter.load_state_dict(f.adapter_state)

    mode = c.train.trainable
    dit.requires_grad_(mode == "full")
    dit.adapter.requires_grad_(True)
    lora = None
    if mode == "lora":
        from .lora import LoRASet
        lora = LoRASet(dit, c.train.lora_targets, c.train.lora_rank, c.train.lora_alpha)
    module = MoCATrainModule(dit, lora)
    bdt, pdt = DTYPES[c.model.backbone_dtype], DTYPES[c.model.param_dtype]
    for name, p in module.named_parameters():
        if name.startswith("dit.patch_embedding"):               # MoCADiT runs the patch conv in fp32
            dt = torch.float32
        else:
            dt = pdt if p.requires_grad else bdt
        p.data = p.data.to(device, dtype=dt)
    for name, b in module.named_buffers():
        b.data = b.data.to(device)
    return module


def describe(module: MoCATrainModule) -> dict:
    """Parameter counts (millions) for the start-up log line."""
    named = list(module.named_parameters())
    return {"backbone": sum(p.numel() for n, p in named if not n.startswith(("dit.adapter.", "lora."))) / 1e6,
            "adapter": sum(p.numel() for n, p in named if n.startswith("dit.adapter.")) / 1e6,
            "trainable": sum(p.numel() for _, p in named if p.requires_grad) / 1e6}


def build_lvpl(c: TrainConfig, device):
    lv = c.objective.lvpl
    if lv.weight <= 0:
        return None
    ex = build_extractor(lv.extractor, vae=lv.vae, vae_dim=lv.vae_dim, stages=lv.stages, checkpoint=lv.checkpoint)
    return LatentVideoPerceptualLoss(ex, lv.face_weight, lv.background_weight, lv.temporal_weight,
                                     lv.stage_weights).to(device)


def load_empty_text(path):
    """The cached encoding of "" ([L, 4096]) from objective.empty_text, or None."""
    if not path:
        return None
    from ..checkpoint import read_safetensors
    t, _ = read_safetensors(path)
    if "text" not in t:
        raise ValueError(f"objective.empty_text {path} must hold a tensor named 'text' [L, 4096] "
                         "(train_moca.py cache writes empty_text.safetensors next to the shards)")
    return t["text"].float()
