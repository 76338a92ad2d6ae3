"""The toy world's trained models in one object: reference photo + prompt -> video, as the demo, the
evaluation and the tests run them (ComfyUI runs the same files through its own nodes).

    toy = ToyPipeline.load()                                   # the files shipped in toy_models/
    ident = toy.identity(photo)                                # [1, M, D_id] identity tokens
    frames = toy.generate("a person nods, ...", ident, seed=0)  # [17, 128, 128, 3] uint8
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import MoCAConfig
from ..dit import MoCADiT
from ..identity import MoCAIdentity
from ..latents import denormalize_latent, normalize_latent
from ..sampling import make_noise, sample
from .text import ToyTextEncoder

REPO = Path(__file__).resolve().parents[2]
TOY_MODELS = REPO / "toy_models"
FILES = {
    "backbone": TOY_MODELS / "diffusion_models" / "toy_wan_t2v.safetensors",
    "adapter": TOY_MODELS / "moca" / "toy_moca_adapter.safetensors",
    # the pair fine-tuned on two-person clips (configs/toy_moca_multi.yaml, then toy_moca_multi_binding.yaml):
    # the two-person template's models
    "backbone_two_people": TOY_MODELS / "diffusion_models" / "toy_wan_t2v_two_people.safetensors",
    "adapter_two_people": TOY_MODELS / "moca" / "toy_moca_two_people_adapter.safetensors",
    "vae": TOY_MODELS / "vae" / "toy_wan_vae.safetensors",
    "insightface": TOY_MODELS / "insightface",
    "eval_recogniser": TOY_MODELS / "eval" / "rec_eval.onnx",
    "classifiers": TOY_MODELS / "eval" / "toy_classifiers.safetensors",
}
FACE_PACK = "toyface"
FACE_CROP = 128                 # px of the aligned local crop -> a 16x16 face latent
SIZE, FRAMES = 128, 17
VAE_DTYPE = torch.bfloat16
SAMPLING = {"steps": 20, "solver": "dpmpp_2m", "text_cfg": 5.0, "id_cfg": 2.0, "shift": 3.0}


def missing_files(skip=()) -> list[str]:
    """The shipped toy files absent from this checkout (but those named in `skip`)."""
    return [f"{k}: {p}" for k, p in FILES.items() if k not in skip and not p.exists()]


def check_adapter_recognizer(adapter_path, analyzer) -> None:
    """Refuse an adapter file trained on another recogniser's embeddings than ``analyzer``'s (the toy pack's)."""
    from ..provenance import check_identity, read_file_record
    adapter_path = Path(str(adapter_path))
    check_identity(read_file_record(adapter_path), adapter_path.name, analyzer.recognizer,
                   f"the {analyzer.pack.name} pack's identities", "toy pipeline")


@dataclass
class ToyPipeline:
    model: MoCADiT
    vae: torch.nn.Module
    analyzer: object
    text: ToyTextEncoder

    @classmethod
    def load(cls, adapter=None, backbone=None) -> "ToyPipeline":
        """The shipped toy models (or another adapter / backbone file of the toy preset)."""
        given = {k: v for k, v in (("adapter", adapter), ("backbone", backbone)) if v}
        for name, path in given.items():
            if not Path(str(path)).is_file():
                raise FileNotFoundError(f"The given toy {name} file does not exist: {path}. Pass the path of a "
                                        f"{name} exported for the toy preset (e.g. by `train_moca.py export`).")
        missing = missing_files(skip=given)
        if missing:
            raise FileNotFoundError("The toy world's models are missing: " + "; ".join(missing) +
                                    ". They are committed in toy_models/ (git lfs is not used); rebuild them "
                                    "with `make toy`.")
        from ..face import FaceAnalyzer
        from ..wan_vae import load_wan_vae
        model = MoCADiT(MoCAConfig.preset("toy"))
        model.load_backbone(str(backbone or FILES["backbone"]))
        model.load_adapter(str(adapter or FILES["adapter"]))
        analyzer = FaceAnalyzer.load(str(FILES["insightface"]), pack=FACE_PACK, provider="cpu")
        check_adapter_recognizer(adapter or FILES["adapter"], analyzer)
        # the VAE runs in bf16: PyTorch's fp32 CPU conv3d falls back to a slow im2col path at the toy VAE's
        # narrow widths, bf16 goes through oneDNN (~10x faster); the DiT stays fp32
        vae = load_wan_vae(FILES["vae"]).to(VAE_DTYPE).eval()
        return cls(model.eval(), vae, analyzer, ToyTextEncoder())

    # ------------------------------------------------------------------ identity
    @torch.no_grad()
    def encode_identity(self, photos) -> MoCAIdentity:
        """Reference photo(s) ([H, W, 3] uint8, paths, PIL) -> ArcFace embedding + face-crop latent."""
        face = self.analyzer.encode(photos if isinstance(photos, list) else [photos], crop_size=FACE_CROP)
        crop = torch.as_tensor(np.asarray(face.crops)).float()                          # [R, S, S, 3] 0..1
        px = crop.permute(0, 3, 1, 2)[:, :, None] * 2 - 1                                # [R, 3, 1, S, S]
        lat = normalize_latent(self.vae.encode(px.to(VAE_DTYPE)).float())              # [R, 16, 1, S/8, S/8]
        return MoCAIdentity(torch.as_tensor(np.asarray(face.embeddings)).float(), lat,
                            recognizer=self.analyzer.recognizer)

    @torch.no_grad()
    def identity(self, photos) -> torch.Tensor:
        """Reference photo(s) -> identity tokens [1, M, D_id] for `generate`."""
        return self.encode_identity(photos).tokens(self.model.adapter.tokenizer)

    # ------------------------------------------------------------------ video
    @torch.no_grad()
    def generate_latents(self, prompt: str, identity: torch.Tensor | None, seed: int = 0,
                         negative: str = "", **overrides) -> torch.Tensor:
        opts = dict(SAMPLING, **overrides)
        T = (FRAMES - 1) // 4 + 1
        noise = make_noise((1, 16, T, SIZE // 8, SIZE // 8), seed)
        return sample(self.model, noise, self.text(prompt), self.text(negative), identity,
                      progress=False, **opts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Model-space latents [1, 16, T, h, w] -> frames [F, H, W, 3] uint8."""
        video = self.vae.decode(denormalize_latent(latents.float()).to(VAE_DTYPE)).float()  # [1, 3, F, H, W]
        return ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()

    def generate(self, prompt: str, identity: torch.Tensor | None, seed: int = 0, **overrides) -> np.ndarray:
        return self.decode(self.generate_latents(prompt, identity, seed, **overrides))
