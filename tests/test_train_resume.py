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


def _interrupted(run, shards, **sections):
    t = Trainer(tiny_train_config(run, shards, **sections), device="cpu", log=lambda *a: None)
    t.fit(stop_after=2)
    return t


@pytest.mark.parametrize("change,match", [
    ({"train": {"seed": 1}}, "train.seed"),
    ({"data": {"text_len": 24}}, "data.text_len"),
    ({"data": {"shuffle": False}}, "data.shuffle"),
    ({"data": {"automatic_binding": 0.5}}, "data.automatic_binding"),
    ("extra_shard", "shard set"),
])
def test_resume_refuses_a_changed_data_stream(shards, tmp_path, change, match):
    """Only the global batch was checked: a changed seed, shard set or text length resumed silently into a run
    that no longer matches the interrupted one."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(shards, data)
    sections = {"optim": {"max_steps": 4}}
    _interrupted(tmp_path / "run", data, **sections)
    if change == "extra_shard":
        make_synthetic_shards(tmp_path / "more", num_samples=2, per_shard=2, seed=5)
        shutil.copy(tmp_path / "more" / "shard_00000.safetensors", data / "shard_00099.safetensors")
    else:
        sections.update(change)
    t = Trainer(tiny_train_config(tmp_path / "run", data, **sections), device="cpu", log=lambda *a: None)
    with pytest.raises(ValueError, match=match):
        t.resume()
    notes = []
    lenient = tiny_train_config(tmp_path / "run", data, **sections, checkpoint={"every": 0, "strict_resume": False})
    t = Trainer(lenient, device="cpu", log=notes.append)
    assert t.resume() and t.step == 2
    assert any(match in n for n in notes)


def _metric_lines(run):
    import json
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_after_a_crash_and_resume_equal_an_uninterrupted_run(shards, tmp_path):
    """A crash after the last checkpoint left metrics.jsonl lines for steps the resumed run then logged again."""
    import shutil

    from moca_model.training.train_state import list_checkpoints
    sections = dict(optim={"max_steps": 5, "warmup_steps": 1}, checkpoint={"every": 2, "keep_last": 5},
                    objective={"lvpl": {"weight": 0.0}})
    Trainer(tiny_train_config(tmp_path / "full", shards, **sections), device="cpu", log=lambda *a: None).fit()
    t = Trainer(tiny_train_config(tmp_path / "run", shards, **sections), device="cpu", log=lambda *a: None)
    t.fit(stop_after=3)
    shutil.rmtree(list_checkpoints(tmp_path / "run")[-1])      # the crash: step 3 logged, never checkpointed
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')                       # ... in the middle of a line
    t = Trainer(tiny_train_config(tmp_path / "run", shards, **sections), device="cpu", log=lambda *a: None)
    assert t.resume() and t.step == 2
    t.fit()

    def losses(run):
        return [(x["step"], x["train/loss"]) for x in _metric_lines(run) if "train/loss" in x]
    assert losses(tmp_path / "run") == losses(tmp_path / "full")
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_checkpoint_files_reach_the_disk(shards, tmp_path, monkeypatch):
    """Only state.json was fsynced: a power cut after the rename could leave a checkpoint folder whose
    safetensors files are empty or partial."""
    import os
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the synced files")
    monkeypatch.setattr(os, "fsync", spy)
    t = Trainer(tiny_train_config(tmp_path / "run", shards, train={"ema_decay": 0.9}), device="cpu",
                log=lambda *a: None)
    t.train_step()
    path = t.save()
    names = {os.path.basename(p) for p in synced}
    assert {"model.safetensors", "optimizer.safetensors", "ema.safetensors", "state.json"} <= names
    assert str(path.parent) in synced                          # the rename itself is durable


def test_resume_and_export_keep_the_model_the_checkpoint_trained(shards, tmp_path):
    """The real presets became lean MoCA (issue 10): a run started on another model must not resume into the
    new one's shapes, and a checkpoint exports as the model it trained, which its state records."""
    import json

    from moca_model.checkpoint import read_moca
    from moca_model.training.checkpointing import checkpoint_model_config
    from moca_model.training.export import export_checkpoint
    from moca_model.training.train_state import list_checkpoints
    from moca_model.variants import variant_config, variant_of
    sections = {"optim": {"max_steps": 4}, "checkpoint": {"every": 2}}
    _interrupted(tmp_path / "run", shards, **sections)
    ck = list_checkpoints(tmp_path / "run")[-1]
    st = json.loads((ck / "state.json").read_text())
    assert checkpoint_model_config(st) == variant_config("moca", "tiny")
    lean = Trainer(tiny_train_config(tmp_path / "run", shards, model={"variant": "lean"}, **sections),
                   device="cpu", log=lambda *a: None)
    with pytest.raises(ValueError, match=r"trained another MoCA model \(moca\) than this config builds \(lean\)"
                                         r".*model.variant: moca"):
        lean.resume()
    same = Trainer(tiny_train_config(tmp_path / "run", shards, model={"variant": "moca"}, **sections),
                   device="cpu", log=lambda *a: None)
    assert same.resume() and same.step == 2                       # the variant spelled out: the same model
    f = read_moca(export_checkpoint(ck, tmp_path / "out.safetensors"))
    assert f.config == variant_config("moca", "tiny")
    # a checkpoint from before the change records no model: its preset's model then, MoCA as designed
    del st["moca_config"]
    st["config"]["model"]["preset"] = "wan2.1-1.3b"
    assert variant_of(checkpoint_model_config(st)) == "moca" and checkpoint_model_config(st).moca_dim == 768
    st["config"]["model"]["variant"] = "lean"
    assert checkpoint_model_config(st) == variant_config("lean", "wan2.1-1.3b")


def test_model_variant_is_validated(tmp_path, shards):
    with pytest.raises(ValueError, match=r"model.variant='no_identity'.*no adapter to train"):
        tiny_train_config(tmp_path, shards, model={"variant": "no_identity"})
    with pytest.raises(ValueError, match=r"model.variant='big'"):
        tiny_train_config(tmp_path, shards, model={"variant": "big"})


def test_a_fresh_start_never_overwrites_an_earlier_run(shards, tmp_path):
    """train_moca.py without --resume on an out_dir with checkpoints stops (it would train from step 0 and
    overwrite them), naming --resume; with --resume it continues; --resume on an empty out_dir starts fresh."""
    import json

    from moca_model.training.cli import train_main
    from moca_model.training.train_state import list_checkpoints
    cfg = tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 3, "warmup_steps": 1},
                            checkpoint={"every": 1, "keep_last": 5}, objective={"lvpl": {"weight": 0.0}})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    args = ["--config", str(path), "--device", "cpu"]
    assert train_main(args + ["--resume", "--stop-after", "2"]) == 0        # nothing to resume: a fresh start
    before = {c.name: (c / "state.json").stat().st_mtime_ns for c in list_checkpoints(tmp_path / "run")}
    assert list(before) == ["step_00000001", "step_00000002"]
    with pytest.raises(SystemExit, match="--resume"):
        train_main(args)
    assert {c.name: (c / "state.json").stat().st_mtime_ns for c in list_checkpoints(tmp_path / "run")} == before
    assert train_main(args + ["--resume"]) == 0
    assert list_checkpoints(tmp_path / "run")[-1].name == "step_00000003"
