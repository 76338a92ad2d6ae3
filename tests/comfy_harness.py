"""Helpers for the tests that run against a real ComfyUI checkout (COMFYUI_PATH); no fakes of `comfy.*`.

- `require_comfyui()`      skip (visibly) when COMFYUI_PATH is not set or not a ComfyUI checkout.
- `import_comfy()`         put ComfyUI on sys.path in CPU mode and import it into this process.
- `load_pack()`            import this repository as a package (as ComfyUI does), e.g. `pack.nodes.patch`.
- `ComfyServer`            `python main.py --cpu` on a free 127.0.0.1 port, with a temp output/input/user
                           directory and an extra_model_paths YAML that points every model folder and
                           `custom_nodes` at a temp tree; `.stop()` kills it.
- `build_models(root)`     the tiny random files the tests and the smoke workflow use.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "moca_pack"
SKIP_REASON = ("COMFYUI_PATH is not set: the ComfyUI integration tests need a ComfyUI checkout "
               "(run: COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests -m comfyui)")


def comfy_path() -> Path | None:
    p = os.environ.get("COMFYUI_PATH")
    return Path(p).resolve() if p else None


def require_comfyui() -> Path:
    p = comfy_path()
    if p is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    if not (p / "main.py").is_file() or not (p / "comfy").is_dir():
        pytest.skip(f"COMFYUI_PATH={p} is not a ComfyUI checkout (no main.py / comfy/)", allow_module_level=True)
    return p


def comfy_python() -> str:
    """The interpreter that runs the ComfyUI server: COMFYUI_PYTHON, else <COMFYUI_PATH>/.venv, else ours."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = comfy_path() / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def import_comfy():
    """Import ComfyUI into this process on the CPU (skips when its dependencies are not installed here)."""
    root = str(require_comfyui())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)     # before the repo root, so `nodes` is ComfyUI's nodes.py, not our package
    mod = sys.modules.get("nodes")
    if mod is not None and not str(getattr(mod, "__file__", "")).startswith(root):
        del sys.modules["nodes"]
    try:
        from comfy.cli_args import args
        args.cpu = True
        args.disable_api_nodes = True
        import comfy.model_management  # noqa: F401  (decides the device now: CPU)
        import comfy.sd  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ComfyUI at {root} cannot be imported by {sys.executable} ({e}); run pytest with "
                    "ComfyUI's own Python, e.g. $COMFYUI_PATH/.venv/bin/python -m pytest tests -m comfyui",
                    allow_module_level=True)


def load_pack():
    """This repository imported as the package `moca_pack` (relative imports work as inside ComfyUI)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return pack


def pack_module(name: str):
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


# ---------------------------------------------------------------------------------------------- test models
def tiny_moca(seed: int = 0):
    """A tiny random MoCA-DiT whose MoCA layers are NOT zero (so MoCA visibly changes the output)."""
    import torch

    mm = pack_module("moca_model")
    torch.manual_seed(seed)
    model = mm.MoCADiT(mm.MoCAConfig.preset("tiny")).eval()
    with torch.no_grad():
        for layer in model.adapter.layers:
            torch.nn.init.normal_(layer.out.weight, std=0.05)
            torch.nn.init.normal_(layer.router.proj_x.weight, std=0.1)
    return model


def denoise(model, x, sigma, ctx, model_conds=None):
    """One denoiser call of a ComfyUI MODEL through ComfyUI's real path (wrappers, patches, model_sampling)."""
    import torch

    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension
    comfy.model_management.load_models_gpu([model])
    opts = comfy.model_patcher.create_model_options_clone(model.model_options)
    to = dict(opts.get("transformer_options", {}))
    to["wrappers"] = comfy.patcher_extension.copy_nested_dicts(model.wrappers)
    to["sigmas"] = sigma
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to, **(model_conds or {}))


def native_tiny_wan(root: Path, seed: int = 0):
    """tiny_moca() written as a Wan checkpoint under `root` and loaded by ComfyUI's own loader (a native
    WanModel), plus its adapter as the pack's ModelPatcher: (reference MoCADiT, ComfyUI model, adapter)."""
    import comfy.sd
    ref = tiny_moca(seed)
    path = Path(root) / "tiny_wan.safetensors"
    pack_module("moca_model").save_wan_checkpoint(path, ref, prefix="model.diffusion_model.", overwrite=True)
    model = comfy.sd.load_diffusion_model(str(path))
    adapter = pack_module("nodes.adapter").build_adapter_patcher(ref.config, ref.adapter.state_dict(), "tiny")
    return ref, model, adapter


def saved_video(server, entry: dict):
    """The frames [F, H, W, 3] uint8 of the first .mp4 a prompt's history entry says it saved."""
    import av
    import numpy as np
    saved = [o for out in entry["outputs"].values() for o in out.get("images", []) + out.get("videos", [])
             if o["filename"].endswith(".mp4")]
    assert saved, entry["outputs"]
    path = server.root / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def tiny_wan_lora(ref, rank: int = 4, seed: int = 0, std: float = 0.05) -> dict:
    """A random LoRA on every attention and FFN linear of a tiny Wan (ComfyUI's "diffusion_model.<layer>"
    lora_up / lora_down / alpha keys, what distilled speed-up LoRAs for Wan use)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in ref.named_modules():
        if name.startswith("blocks.") and isinstance(m, torch.nn.Linear) and any(
                part in name for part in ("self_attn.", "cross_attn.", "ffn.")):
            key = f"diffusion_model.{name}"
            out[f"{key}.lora_up.weight"] = torch.randn(m.out_features, rank, generator=g) * std
            out[f"{key}.lora_down.weight"] = torch.randn(rank, m.in_features, generator=g) * std
            out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


def write_wan_vae(path: Path):
    """A random Wan 2.1 VAE (ComfyUI's own class, fp16) so VAELoader / VAE.encode / decode really run.

    ComfyUI builds its VAE with `disable_weight_init` ops (the weights come from a file), so a fresh WanVAE
    holds uninitialised memory (inf / NaN): every conv gets PyTorch's standard initialisation here, giving
    finite latents and decoded frames that vary with the latent."""
    import torch
    from safetensors.torch import save_file

    import comfy.ldm.wan.vae as wan_vae
    torch.manual_seed(0)
    vae = wan_vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    for m in vae.modules():
        for base in (torch.nn.Conv3d, torch.nn.Conv2d, torch.nn.Linear):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
    state = {k: v.half().contiguous() for k, v in vae.state_dict().items()}
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    assert not bad, f"test VAE has non-finite weights: {bad[:5]}"
    save_file(state, str(path))


def write_png(path: Path, array):
    from PIL import Image
    Image.fromarray(array).save(path)


def build_models(root: Path, with_vae: bool = True) -> dict:
    """Everything the server tests need, under `root` (models/, input/)."""
    import numpy as np
    import torch

    import face_models

    mm = pack_module("moca_model")
    models, inp = root / "models", root / "input"
    for d in ("moca", "diffusion_models", "text_encoders", "vae", "insightface", "moca_identities",
              "moca_text_embeds", "loras"):
        (models / d).mkdir(parents=True, exist_ok=True)
    inp.mkdir(parents=True, exist_ok=True)
    ref = tiny_moca()
    mm.save_moca(models / "moca" / "moca_tiny_dit.safetensors", ref, overwrite=True)
    mm.save_moca(models / "moca" / "moca_tiny_adapter.safetensors", ref.adapter, overwrite=True)
    mm.save_wan_checkpoint(models / "diffusion_models" / "moca_tiny_wan.safetensors", ref,
                           prefix="model.diffusion_model.", overwrite=True)
    from safetensors.torch import save_file
    save_file(tiny_wan_lora(ref), str(models / "loras" / "wan2.1_t2v_1.3B_distill_lora.safetensors"))  # the template's name
    g = torch.Generator().manual_seed(1)
    for name in ("smoke_positive", "smoke_negative"):
        mm.save_text_embeds(models / "moca_text_embeds" / f"{name}.safetensors",
                            [[torch.randn(1, 12, 4096, generator=g), {}]], overwrite=True)
    if with_vae:
        write_wan_vae(models / "vae" / "moca_tiny_test_vae.safetensors")
    face_models.make_tiny_pack(models / "insightface")
    photo = face_models.astronaut()
    write_png(inp / "moca_smoke_face.png", photo)
    write_png(inp / "moca_no_face.png", np.zeros((256, 256, 3), np.uint8))
    # Names the shipped UI workflows refer to: empty placeholders, so their combo values validate.
    for rel in ("diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors", "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                "vae/wan_2.1_vae.safetensors", "moca/moca_wan2.1_t2v_1.3B.safetensors",
                "diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                "diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "moca/moca_wan2.2-a14b-high-noise.safetensors",
                "moca/moca_wan2.2-a14b-low-noise.safetensors",
                "moca_identities/identity_00001_.safetensors"):
        (models / rel).touch()
    (models / "moca" / "pickled_adapter.ckpt").write_bytes(b"\x80\x02}q\x00.")   # must not be listed
    for name in ("face.png", "face_2.png", "face_3.png"):
        write_png(inp / name, photo)
    return {"reference": ref}


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log_path = self.root / "comfyui.log"

    def start(self, timeout: float = 120.0):
        nodes_dir = self.root / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        link = nodes_dir / "ComfyUI-MoCA"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        yaml = self.root / "extra_model_paths.yaml"
        folders = ["moca", "diffusion_models", "text_encoders", "vae", "insightface", "moca_identities",
                   "moca_text_embeds", "loras"]
        yaml.write_text("moca_tests:\n" f"  base_path: {self.root / 'models'}\n"
                        + "".join(f"  {f}: {f}\n" for f in folders)
                        + f"  custom_nodes: {nodes_dir}\n")
        for d in ("output", "input", "temp", "user"):
            (self.root / d).mkdir(exist_ok=True)
        cmd = [comfy_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-api-nodes", "--extra-model-paths-config", str(yaml),
               "--output-directory", str(self.root / "output"), "--input-directory", str(self.root / "input"),
               "--temp-directory", str(self.root / "temp"), "--user-directory", str(self.root / "user"),
               "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb", "--dont-print-server"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(comfy_path()), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.tail()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "log", None):
            self.log.close()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 180) -> dict:
        """POST /prompt, poll /history until done; returns the history entry (raises on HTTP 400)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "moca-tests"})
        if status != 200:
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(body, indent=1)[:3000]}")
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None \
                    and (hist[pid]["status"].get("completed") or hist[pid]["status"].get("status_str") == "error"):
                return hist[pid]
            time.sleep(0.25)
        raise AssertionError(f"prompt {pid} did not finish in {timeout}s:\n{self.tail()}")


def execution_error(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
