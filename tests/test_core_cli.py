"""The README's commands: the demo writes a playable video and an honest report; the benchmark prints
its table and the overhead line."""
import json
import re

import av
import pytest

from moca_model.__main__ import main as cli
from moca_model import bench, demo


def test_demo_writes_video_and_report(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--preset", "tiny", "--steps", "2", "--frames", "9", "--height", "64",
            "--width", "96"]
    report = demo.main(args)
    with av.open(str(tmp_path / "demo.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (64, 96, 3)              # one frame per latent frame
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["runs"]["with_identity"]["seconds_per_step"] > 0
    assert saved["runs"]["without_identity"]["seconds_per_step"] > 0
    assert saved["latent_mean_abs_diff_identity_vs_none"] > 0               # identity changes the video
    assert any("RANDOM" in n for n in saved["notes"]) and any("STAND-IN" in n for n in saved["notes"])
    assert saved["config"]["dim"] == 256 and report["steps"] == 2
    assert "RANDOM backbone weights" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already exist"):                   # outputs are never overwritten silently
        demo.main(args)
    demo.main(args + ["--overwrite", "--seed", "3"])


def test_demo_rejects_bad_sizes(tmp_path):
    with pytest.raises(SystemExit, match="4k\\+1"):
        demo.main(["--out", str(tmp_path), "--preset", "tiny", "--frames", "8"])
    with pytest.raises(SystemExit, match="multiples of 16"):
        demo.main(["--out", str(tmp_path), "--preset", "tiny", "--height", "100"])


def test_bench_prints_table_and_ratio(capsys):
    res = bench.main(["--preset", "tiny", "--frames", "1,2", "--reps", "1", "--quick"])
    out = capsys.readouterr().out
    assert re.search(r"^moca_overhead_ratio=\d+\.\d{3}$", out.strip().splitlines()[-1])
    assert re.search(r"^sampler_step_ratio=\d+\.\d{3}$", out, re.M)              # identity guidance vs text CFG
    assert res["sampler"]["identity_s_per_step"] > 0 and res["sampler"]["text_s_per_step"] > 0
    assert len(res["rows"]) == 2 and all(r["moca_peak_mb"] > 0 for r in res["rows"])
    assert "wan2.1-1.3b (lean): adapter 35.4M = 2.5% of the backbone" in out         # the preset's model
    assert res["variant"] == "moca" and res["variant_wan2.1-1.3b"] == "lean"
    assert res["flops_wan2.1-1.3b"]["ratio"] < 0.12                          # DESIGN budget: <= 12% FLOPs
    designed = bench.main(["--preset", "tiny", "--frames", "1", "--reps", "1", "--quick", "--no-memory",
                           "--variant", "moca"])
    assert "wan2.1-1.3b (moca): adapter 203.1M = 14.3% of the backbone" in capsys.readouterr().out
    assert designed["flops_wan2.1-1.3b"]["ratio"] > res["flops_wan2.1-1.3b"]["ratio"]   # lean costs less


def test_cli_usage():
    assert cli([]) == 2


def test_demo_takes_real_input_files(tmp_path):
    """Text embeds and identity files as the ComfyUI nodes write them, and a trained-looking adapter."""
    import torch
    from moca_model import MoCAConfig, MoCADiT, MoCAIdentity, save_moca, save_text_embeds
    model = MoCADiT(MoCAConfig.preset("tiny"))
    with torch.no_grad():
        for layer in model.adapter.layers:
            layer.out.weight.normal_(std=0.05)
    adapter = save_moca(tmp_path / "adapter.safetensors", model.adapter)
    pos, _ = save_text_embeds(tmp_path / "pos.safetensors", [(torch.randn(1, 9, 4096), {})])
    ident = MoCAIdentity(torch.randn(2, 512), torch.randn(2, 16, 1, 32, 32)).save(tmp_path / "id.safetensors")
    report = demo.main(["--out", str(tmp_path / "o"), "--steps", "1", "--frames", "5", "--height", "32",
                        "--width", "32", "--adapter", str(adapter), "--text-embeds", str(pos),
                        "--identity", str(ident)])
    notes = " ".join(report["notes"])
    assert "MoCA adapter from" in notes and "umT5 states from" in notes and "2 reference(s)" in notes
    assert report["latent_mean_abs_diff_identity_vs_none"] > 0


def test_default_demo_without_toy_models_says_so(tmp_path, monkeypatch, capsys):
    """With no model flags the demo runs the toy world's trained models; where they are missing it runs the
    random tiny model and says so (never a silent stand-in)."""
    from moca_model.toy import pipeline
    monkeypatch.setitem(pipeline.FILES, "adapter", tmp_path / "absent.safetensors")
    report = demo.main(["--out", str(tmp_path / "o"), "--steps", "1", "--frames", "5", "--height", "32",
                        "--width", "32"])
    assert any("not in this checkout yet" in n and "absent.safetensors" in n for n in report["notes"])
    assert "make toy" in capsys.readouterr().out
