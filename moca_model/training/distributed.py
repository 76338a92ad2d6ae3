"""Process set-up for the trainer: rank / world / device from torchrun's environment, the process group, and
the determinism settings that exact resume relies on."""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

# cuBLAS needs a fixed workspace layout to pick reproducible GEMM reductions; it is read when the first cuBLAS
# handle is created, so it must be in the environment before any CUDA matmul runs.
CUBLAS_WORKSPACE = ":4096:8"


class Dist:
    """rank / world / device of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self, device: str | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if want_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        self.is_main = self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t


def configure_determinism(enabled: bool, device: torch.device) -> dict:
    """Settings for bit-identical reruns and resumes on the same hardware and software (docs/training.md §8).

    enabled: `torch.use_deterministic_algorithms(True)` in strict mode, so an operation without a
    deterministic kernel stops the run with PyTorch's error naming it instead of silently breaking exactness;
    in strict mode PyTorch's SDPA runs Flash attention's deterministic backward and memory-efficient
    attention without split-key accumulation, and never cuDNN attention (disabled here as well, for older
    builds); cuDNN convolutions deterministic and not autotuned; cuBLAS with a fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, set before the first CUDA GEMM). Cost (CUDA only): slower attention backward and
    convolutions; measure it with `python -m moca_model.training.bench --device cuda [--deterministic]`.
    disabled: PyTorch's defaults (fastest kernels, runs differ in the last bits).
    Returns the settings applied, for the log."""
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(not enabled)
    applied = {"deterministic_algorithms": enabled, "warn_only": False, "cudnn_deterministic": enabled,
               "cudnn_sdp": not enabled}
    if enabled and device.type == "cuda":
        have = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if have not in (":4096:8", ":16:8"):
            # Dist sets it before CUDA starts; someone else may have initialised CUDA (and cuBLAS) first.
            warnings.warn(f"CUBLAS_WORKSPACE_CONFIG is {have!r}; exact resume needs ':4096:8' or ':16:8' set "
                          "before CUDA starts (export it in the launch environment)", stacklevel=2)
        applied["cublas_workspace"] = have
    return applied
