"""Training checkpoints for exact resume: safetensors for tensors, JSON for scalars and RNG states, no pickles.

A checkpoint is a folder `<out_dir>/checkpoints/step_00000100/`:
    model.safetensors      trainable parameters by name (full tensors, gathered under FSDP)
    ema.safetensors        EMA shadows (if EMA is on)
    optimizer.safetensors  AdamW state flattened as "<param>.<exp_avg|exp_avg_sq|step>"
    state.json             step, samples seen, world size, param groups, RNG states, the config
It is written to a hidden temp folder, every file and the folder fsynced, renamed into place (atomic on
POSIX) and the parent folder fsynced, so a crash or power cut leaves either the whole checkpoint or none;
only the last `keep_last` are kept. Only rank 0 writes.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import torch

from ..atomic import _umask

CKPT_RE = re.compile(r"^step_(\d{8})$")
STATE_VERSION = 1


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_states() -> dict:
    """The process's global RNG states (the trainer draws per-sample generators, but other code may not)."""
    import numpy as np
    st = {"torch": _b64(torch.get_rng_state()), "python": repr(random.getstate())}
    np_state = np.random.get_state()
    st["numpy"] = [np_state[0], base64.b64encode(np_state[1].tobytes()).decode("ascii"), *map(float, np_state[2:])]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_states(st: dict):
    import ast

    import numpy as np
    torch.set_rng_state(_unb64(st["torch"]))
    random.setstate(_to_tuple(ast.literal_eval(st["python"])))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype=np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in st["cuda"]])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def flatten_optimizer(osd: dict) -> tuple[dict, list]:
    """DCP-style optimizer state {"state": {fqn: {k: v}}, "param_groups": [...]} -> (tensors, groups)."""
    tensors = {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"{fqn}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, groups


def unflatten_optimizer(tensors: dict, groups: list) -> dict:
    state = {}
    names = {p for g in groups for p in g["params"]}
    for key, v in tensors.items():
        fqn, k = key.rsplit(".", 1)
        if fqn not in names:
            raise ValueError(f"optimizer state has {fqn!r}, which is not a trainable parameter of this run")
        state.setdefault(fqn, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def list_checkpoints(out_dir) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if CKPT_RE.match(p.name) and (p / "state.json").is_file()),
                  key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def fsync_path(path):
    """Flush a file's or a folder's entry to the disk (a folder: the names it holds, e.g. after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir, step: int, model_sd: dict, optim_tensors: dict, optim_groups: list,
                    ema_sd: dict | None, state: dict, keep_last: int = 3) -> Path:
    from safetensors.torch import save_file
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    def write(sd, name):
        save_file({k: v.detach().to("cpu").contiguous() for k, v in sd.items()}, str(tmp / name))
        os.chmod(tmp / name, 0o666 & ~_umask())            # safetensors creates 0600 files
        fsync_path(tmp / name)
    write(model_sd, "model.safetensors")
    write(optim_tensors, "optimizer.safetensors")
    if ema_sd is not None:
        write(ema_sd, "ema.safetensors")
    full_state = dict(state, step=step, version=STATE_VERSION, optimizer_groups=optim_groups, time=time.time(),
                      rng=rng_states())
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(full_state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(root)
    for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path) -> dict:
    """{"model", "optimizer", "ema" (or None), "state"} from a checkpoint folder."""
    from safetensors.torch import load_file
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{path}: checkpoint version {state['version']} is newer than this trainer")
    ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    return {"model": load_file(str(path / "model.safetensors")),
            "optimizer": unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer_groups"]),
            "ema": ema, "state": state}
