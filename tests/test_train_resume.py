"""Exact resume: determinism settings, what a resume refuses, and what a crash and a resume leave on disk."""
import pytest
import torch

from moca_model.training.synthetic import make_synthetic_shards, tiny_train_config
from moca_model.training.trainer import Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_synthetic_shards(d, num_samples=8, per_shard=4, seed=0)
    return d


@pytest.fixture
def restore_determinism():
    """The trainer sets process-wide flags; put them back for the other tests."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.cudnn_sdp_enabled())
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.backends.cuda.enable_cudnn_sdp(saved[4])


def test_deterministic_training_is_strict(shards, tmp_path, restore_determinism):
    """train.deterministic: strict deterministic algorithms (warn_only would let Flash / memory-efficient
    attention run their non-deterministic backward on CUDA), no cuDNN attention, deterministic cuDNN."""
    Trainer(tiny_train_config(tmp_path / "on", shards), device="cpu", log=lambda *a: None)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    Trainer(tiny_train_config(tmp_path / "off", shards, train={"deterministic": False}), device="cpu",
            log=lambda *a: None)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cuda.cudnn_sdp_enabled()


def test_cuda_determinism_needs_the_cublas_workspace(monkeypatch, restore_determinism):
    from moca_model.training.distributed import configure_determinism
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.warns(UserWarning, match="CUBLAS_WORKSPACE_CONFIG"):
        configure_determinism(True, torch.device("cuda"))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    assert configure_determinism(True, torch.device("cuda"))["cublas_workspace"] == ":4096:8"
