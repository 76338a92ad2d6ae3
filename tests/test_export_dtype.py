"""The trainer exports adapters in bfloat16 by default (half of float32: the 14B adapter is 3.3 GiB, not 6.6)."""
import torch
from safetensors import safe_open

from moca_model import MoCAAdapter, MoCAConfig, read_moca
from moca_model.training.config import TrainConfig
from moca_model.training.export import export_state


def test_export_defaults_to_bfloat16(tmp_path):
    assert TrainConfig().export.dtype == "bfloat16"
    cfg = MoCAConfig.preset("tiny")
    state = {"dit.adapter." + k: v for k, v in MoCAAdapter(cfg).init_weights().state_dict().items()}
    out = export_state(state, cfg, tmp_path / "a.safetensors")
    with safe_open(str(out), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert read_moca(out).adapter_state["layers.0.out.weight"].dtype == torch.bfloat16
    fp32 = export_state(state, cfg, tmp_path / "b.safetensors", dtype="float32")
    assert fp32.stat().st_size > 1.9 * out.stat().st_size
