"""torchrun scale-out on CPU (gloo): a 2-process DDP run equals a 1-process run with the same global batch;
FSDP2 runs and matches too where this PyTorch build supports it on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moca_model.training.synthetic import make_synthetic_shards, tiny_train_config
from moca_model.training.train_state import list_checkpoints
from moca_model.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _torchrun(cfg_path: Path, nproc: int, timeout=240, extra=()):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "train_moca.py"), "--config", str(cfg_path), "--device", "cpu", *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _final(run_dir):
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def _compare(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: 1 process, micro-batch 4 (= global batch of 2 processes x 2)."""
    tmp = tmp_path_factory.mktemp("dist")
    make_synthetic_shards(tmp / "data", num_samples=8, per_shard=4)
    # float64 so that the comparison measures the plumbing (sharding, gradient averaging, per-sample draws)
    # and not float32 summation order, which Adam's g / sqrt(v) amplifies for near-zero gradients.
    sections = dict(optim={"max_steps": STEPS, "warmup_steps": 1}, train={"ema_decay": 0.9},
                    model={"backbone_dtype": "float64", "param_dtype": "float64"})
    cfg = tiny_train_config(tmp / "single", tmp / "data", data={"batch_size": 4}, **sections)
    torch.set_num_threads(1)
    Trainer(cfg, device="cpu", log=lambda *a: None).fit()
    return tmp, sections, _final(tmp / "single")


def _write_cfg(tmp, name, sections, **extra):
    data = {"batch_size": 2, **extra.pop("data", {})}
    cfg = tiny_train_config(tmp / name, tmp / "data", data=data, **{**sections, **extra})
    p = tmp / f"{name}.json"
    p.write_text(json.dumps(cfg.to_dict()))
    return p


@pytest.mark.slow
def test_ddp_two_processes_match_one(single):
    tmp, sections, ref = single
    res = _torchrun(_write_cfg(tmp, "ddp", sections), 2)
    assert res.returncode == 0, res.stderr[-4000:]
    diff = _compare(ref, _final(tmp / "ddp"))
    print(f"\nDDP 2x2 vs 1x4 after {STEPS} steps: max |param diff| = {diff:.3e}")
    assert diff <= 1e-6
    assert (tmp / "ddp" / "moca_adapter.safetensors").is_file()


@pytest.mark.slow
def test_fsdp2_interrupted_and_resumed_matches_one_process(single):
    """FSDP2 (fully_shard) on 2 processes, stopped after 2 steps and resumed from the checkpoint."""
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2 API present)
    tmp, sections, ref = single
    cfg = _write_cfg(tmp, "fsdp_resume", sections, train={**sections["train"], "strategy": "fsdp"},
                     validation={"every": STEPS, "steps": 2})        # validation through the sharded model
    env_args = ["--stop-after", "2"]
    res = _torchrun(cfg, 2, extra=env_args)
    if res.returncode != 0 and "not supported" in res.stderr.lower():
        pytest.skip("FSDP2 does not run on CPU/gloo with this PyTorch build")
    assert res.returncode == 0, res.stderr[-4000:]
    assert list_checkpoints(tmp / "fsdp_resume")[-1].name == "step_00000002"
    res = _torchrun(cfg, 2, extra=["--resume"])
    assert res.returncode == 0, res.stderr[-4000:]
    assert len(list((tmp / "fsdp_resume" / "validation").glob("*.mp4"))) == 1
    diff = _compare(ref, _final(tmp / "fsdp_resume"))
    print(f"\nFSDP2 2 + 2 steps (resumed) vs 1 process x 4 steps: max |param diff| = {diff:.3e}")
    assert diff <= 1e-6


COUNT_REDUCE_SCATTERS = """
import json, sys
import torch.distributed as dist
from moca_model.training.config import TrainConfig
from moca_model.training.trainer import Trainer
calls = []
real = dist.reduce_scatter_single
def counting(*a, **k):
    calls.append(1)
    return real(*a, **k)
dist.reduce_scatter_single = counting
out = {}
for accum in (1, 3):
    t = Trainer(TrainConfig.load(sys.argv[1]).with_overrides([f"data.grad_accum={accum}"]), device="cpu",
                log=lambda *a: None)
    n0 = len(calls)
    t.train_step()
    out[accum] = len(calls) - n0
if t.dist.rank == 0:
    json.dump(out, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_accumulation_reduces_gradients_once_per_step(single):
    """FSDP2 reduce-scattered every micro-batch's gradients (only DDP had no_sync): 3 micro-batches cost 3x the
    communication of one."""
    tmp, sections, _ = single
    cfg = _write_cfg(tmp, "fsdp_count", sections, train={**sections["train"], "strategy": "fsdp"})
    script = tmp / "count.py"
    script.write_text(COUNT_REDUCE_SCATTERS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for attempt in range(2):   # a rank has aborted at exit under load ("terminate called without an active
        # exception", after a complete run) in 2 of ~8 full-suite runs, never alone: retry once, report both
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(script), str(cfg), str(tmp / "counts.json")], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=240)
        if res.returncode == 0:
            break
        print(f"\ntorchrun attempt {attempt + 1} failed ({res.returncode}):\n{res.stderr[-1500:]}")
    assert res.returncode == 0, res.stderr[-4000:]
    counts = json.loads((tmp / "counts.json").read_text())
    print(f"\nFSDP2 reduce-scatters per optimiser step: {counts['1']} with 1 micro-batch, {counts['3']} with 3")
    assert counts["1"] > 0 and counts["3"] == counts["1"]


@pytest.mark.slow
def test_fsdp2_gradient_accumulation_matches_one_process(single):
    """2 processes x 2 micro-batches of 1 (gradients reduced once per step) == 1 process x 4 micro-batches of 1.
    (Against one batch of 4 they differ by ~3e-6, in one process too: the loss is computed in float32 even
    with float64 weights, and its rounding depends on the micro-batch shape.)"""
    tmp, sections, _ = single
    ref_cfg = tiny_train_config(tmp / "accum_1proc", tmp / "data", data={"batch_size": 1, "grad_accum": 4},
                                **sections)
    Trainer(ref_cfg, device="cpu", log=lambda *a: None).fit()
    cfg = _write_cfg(tmp, "fsdp_accum", sections, train={**sections["train"], "strategy": "fsdp"},
                     data={"batch_size": 1, "grad_accum": 2})
    res = _torchrun(cfg, 2)
    assert res.returncode == 0, res.stderr[-4000:]
    diff = _compare(_final(tmp / "accum_1proc"), _final(tmp / "fsdp_accum"))
    print(f"\nFSDP2 2 processes x 2 micro-batches vs 1 process x 4: max |param diff| = {diff:.3e}")
    assert diff <= 1e-9
