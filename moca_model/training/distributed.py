"""Process set-up for the trainer: rank / world / device from torchrun's environment, the process group, and
the determinism settings that exact resume relies on."""
from __future__ import annotations

import os

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

