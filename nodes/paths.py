"""Model folders of the pack, registered with ComfyUI's folder_paths (so extra_model_paths.yaml works).

- `moca`             adapters and combined MoCA-DiT checkpoints (`models/moca`, .safetensors only)
- `moca_identities`  identity files (`models/moca_identities` and `output/moca_identities`)
- `moca_text_embeds` cached umT5 conditioning (`models/moca_text_embeds` and `output/moca_text_embeds`)
- `insightface`      insightface packs (`models/insightface/models/<pack>/`), shared with PuLID/InstantID

The pack's own `toy_models/` (the toy world's trained models, moca_model/toy) is added to the core
`diffusion_models` and `vae` keys and to `moca` and `insightface`, after the user's folders, so the toy
template runs with nothing copied; the toy reference photos are offered in ComfyUI's input folder.
"""
from __future__ import annotations

import os

import shutil

import folder_paths

from ..moca_model.checkpoint import FORMAT as MOCA_FORMAT

SAFETENSORS = {".safetensors"}
PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_DIR = os.path.join(PACK_DIR, "toy_models")
TOY_INPUTS = os.path.join(PACK_DIR, "toy_models", "input")


def _register(key: str, defaults: list[str], extensions: set | None):
    """Add the default folders after any an extra_model_paths.yaml (or another pack) registered already;
    extensions=None keeps the existing extension filter (an empty set matches every file)."""
    entry = folder_paths.folder_names_and_paths.get(key)
    paths = list(entry[0]) if entry else []
    for d in defaults:
        if d not in paths:
            paths.append(d)
    if extensions is None:
        extensions = set(entry[1]) if entry else set()
    folder_paths.folder_names_and_paths[key] = (paths, set(extensions))


def register_folders():
    models, output = folder_paths.models_dir, folder_paths.get_output_directory()
    _register("moca", [os.path.join(models, "moca")], SAFETENSORS)
    _register("moca_identities", [os.path.join(models, "moca_identities"),
                                  os.path.join(output, "moca_identities")], SAFETENSORS)
    _register("moca_text_embeds", [os.path.join(models, "moca_text_embeds"),
                                   os.path.join(output, "moca_text_embeds")], SAFETENSORS)
    _register("insightface", [os.path.join(models, "insightface")], None)
    for key, sub in (("diffusion_models", "diffusion_models"), ("vae", "vae"), ("moca", "moca"),
                     ("insightface", "insightface")):
        if os.path.isdir(os.path.join(TOY_DIR, sub)):
            _register(key, [os.path.join(TOY_DIR, sub)], None)


def offer_toy_inputs() -> list[str]:
    """Copy the toy reference photos (toy_models/input/*.png) into ComfyUI's input folder when a file of that
    name is not there yet (never overwrites), so Load Image lists them. Returns the names copied."""
    copied = []
    if not os.path.isdir(TOY_INPUTS):
        return copied
    dest = folder_paths.get_input_directory()
    for name in sorted(os.listdir(TOY_INPUTS)):
        target = os.path.join(dest, name)
        if name.endswith(".png") and not os.path.exists(target):
            try:
                os.makedirs(dest, exist_ok=True)
                shutil.copyfile(os.path.join(TOY_INPUTS, name), target + ".tmp")
                os.replace(target + ".tmp", target)
                copied.append(name)
            except OSError as e:            # a read-only input folder must not stop the pack from loading
                print(f"[MoCA] could not offer the toy reference {name} in {dest}: {e}")
    return copied


def files(key: str) -> list[str]:
    return folder_paths.get_filename_list(key)


def moca_files() -> list[str]:
    """The files of models/moca a MoCA loader can use: a safetensors file whose header names another format
    (the trainer's `_lora.safetensors`, meant for LoraLoaderModelOnly; an identity file) is left out. Files
    without a readable header stay listed, so the loader's error says what is wrong with them."""
    out = []
    for name in files("moca"):
        path = folder_paths.get_full_path("moca", name)
        fmt = _header_format(path) if path else None
        if fmt is None or fmt == MOCA_FORMAT:
            out.append(name)
    return out


_HEADER_CACHE: dict = {}


def _header_format(path: str):
    """The "format" entry of a safetensors header (None when unreadable or absent), cached by mtime and size."""
    import json
    import struct
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _HEADER_CACHE:
        fmt = None
        try:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if 0 < n <= 100_000_000:
                    fmt = (json.loads(f.read(n)).get("__metadata__") or {}).get("format")
        except (OSError, ValueError, struct.error):
            fmt = None
        _HEADER_CACHE[key] = fmt
    return _HEADER_CACHE[key]


def insightface_roots() -> list[str]:
    return [p for p in folder_paths.get_folder_paths("insightface") if os.path.isdir(p)] or \
        folder_paths.get_folder_paths("insightface")


def insightface_packs() -> list[str]:
    """Pack names found under every insightface root (<root>/models/<pack>/), plus the usual two."""
    found = []
    for root in insightface_roots():
        base = os.path.join(root, "models")
        if os.path.isdir(base):
            found += [d for d in sorted(os.listdir(base)) if os.path.isdir(os.path.join(base, d))]
    out = []
    for name in ["antelopev2", "buffalo_l"] + found:
        if name not in out:
            out.append(name)
    return out


def output_path(subdir: str, prefix: str, ext: str = ".safetensors") -> str:
    """A new file under output/<subdir>/ named <prefix>_NNNNN_.safetensors that does not exist yet."""
    base = os.path.join(folder_paths.get_output_directory(), subdir)
    full, name, counter, sub, _ = folder_paths.get_save_image_path(prefix, base)
    os.makedirs(full, exist_ok=True)
    while True:
        path = os.path.join(full, f"{name}_{counter:05}_{ext}")
        if not os.path.exists(path):
            return path
        counter += 1


def comfyui_version() -> tuple[int, ...] | None:
    """ComfyUI's version as a tuple (from its comfyui_version.py), None when it cannot be read."""
    try:
        import comfyui_version
        return tuple(int(p) for p in str(comfyui_version.__version__).split(".")[:3])
    except (ImportError, ValueError, AttributeError):
        return None


TOY_VAE_MIN_COMFYUI = (0, 8, 0)     # checked: 0.3.64 fails, 0.8.0 works; the versions between were not tried


def toy_vae_notice(version=None) -> str | None:
    """One line for the start-up log when this ComfyUI may not load the toy VAE (0.3.64 builds every Wan 2.1
    VAE at full width; 0.8.0 reads the width from the weights), else None."""
    version = comfyui_version() if version is None else version
    if version is None or version >= TOY_VAE_MIN_COMFYUI or not os.path.isdir(os.path.join(TOY_DIR, "vae")):
        return None
    return (f"[MoCA] ComfyUI {'.'.join(map(str, version))}: the toy world's template (moca_toy_world_cpu) needs "
            f"ComfyUI 0.8.0 or newer - older versions such as 0.3.64 build every Wan 2.1 VAE at full width and "
            f"Load VAE fails with 'size mismatch' on the narrow toy VAE. Update ComfyUI to use it; the rest of "
            f"the pack works on this version.")
