"""Adapter export keeps the dtype it is asked for."""
import pytest
import torch
from safetensors.torch import load_file

from moca_model import MoCAConfig
from moca_model.adapter import MoCAAdapter
from moca_model.training.export import export_state


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16"])
def test_export_writes_the_requested_dtype(tmp_path, dtype):
    """float64 was mapped to float32 silently."""
    cfg = MoCAConfig.preset("tiny")
    state = {"dit.adapter." + k: v.double() for k, v in MoCAAdapter(cfg).init_weights().state_dict().items()}
    out = export_state(state, cfg, tmp_path / "a.safetensors", dtype=dtype)
    assert {t.dtype for t in load_file(str(out)).values()} == {getattr(torch, dtype)}


def test_export_rejects_an_unknown_dtype(tmp_path):
    cfg = MoCAConfig.preset("tiny")
    state = {"dit.adapter." + k: v for k, v in MoCAAdapter(cfg).init_weights().state_dict().items()}
    with pytest.raises(ValueError, match="float8"):
        export_state(state, cfg, tmp_path / "a.safetensors", dtype="float8")
