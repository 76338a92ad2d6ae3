"""The face benchmark runs offline on the tiny test models and prints the provider that ran."""
from moca_model.face import bench


def test_bench_face_tiny_models(capsys):
    assert bench.main(["--refs", "1,2", "--repeat", "1", "--frames", "2", "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "tiny test models" in out and "via onnxruntime" in out and "on CPU" in out
    assert "| refs | encode s | ms / ref |" in out
    assert "|    1 |" in out and "|    2 |" in out and "likeness over 2 frames" in out


def test_bench_run_returns_numbers():
    res = bench.run(refs=(1,), repeat=1, frames=0, backend="onnxruntime", out=lambda s: None)
    assert res["rows"][0]["refs"] == 1 and res["rows"][0]["encode_s"] > 0
    assert res["det_provider"] == "CPUExecutionProvider" and res["likeness"] is None
