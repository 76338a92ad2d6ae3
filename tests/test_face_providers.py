"""Execution provider choice: auto keeps an accelerator only if it really starts; explicit choices fail loudly."""
import logging
import types

import pytest

from moca_model.face import FaceAnalyzer, FaceProviderError
from moca_model.face import providers as prov

CPU, CUDA = prov.CPU, prov.CUDA


class FakeSession:
    def __init__(self, active):
        self._active = active

    def get_providers(self):
        return list(self._active)


def fake_ort(monkeypatch, available):
    mod = types.SimpleNamespace(get_available_providers=lambda: list(available), __version__="9.9.9")
    monkeypatch.setattr(prov, "import_onnxruntime", lambda: mod)


def test_aliases_and_full_names():
    assert prov.normalize_choice("auto") == "auto"
    assert prov.normalize_choice("CUDA") == CUDA
    assert prov.normalize_choice("directml") == "DmlExecutionProvider"
    assert prov.normalize_choice("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"


def test_unknown_provider_lists_choices():
    with pytest.raises(FaceProviderError, match="Choose one of auto, cuda, cpu"):
        prov.normalize_choice("gpu0")


def test_auto_order_skips_azure_and_coreml_for_dynamic_shapes():
    avail = ["AzureExecutionProvider", "CoreMLExecutionProvider", CPU]
    assert prov.candidates("auto", avail, fixed_shape=False) == [[CPU]]
    assert prov.candidates("auto", avail, fixed_shape=True) == [["CoreMLExecutionProvider", CPU], [CPU]]
    assert prov.candidates("auto", [CUDA, "DmlExecutionProvider", CPU], False) == [
        [CUDA, CPU], ["DmlExecutionProvider", CPU], [CPU]]
    assert prov.candidates("TensorrtExecutionProvider", ["TensorrtExecutionProvider", CUDA, CPU], False) == [
        ["TensorrtExecutionProvider", CUDA, CPU]]


def test_explicit_cuda_without_a_working_gpu_says_how_to_fix(tiny_root):
    """On this GPU-less machine an explicit 'cuda' fails either way, with the fix in the message: the CPU
    build lacks the provider; the GPU build (what requirements.txt installs on Linux) has it but it cannot start."""
    import onnxruntime
    if CUDA in onnxruntime.get_available_providers():
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present: explicit 'cuda' works here")
        expected = "CUDAExecutionProvider is installed but did not start"
    else:
        expected = "CUDAExecutionProvider is not available"
    with pytest.raises(FaceProviderError) as e:
        FaceAnalyzer.load(tiny_root, provider="cuda", backend="onnxruntime")
    msg = str(e.value)
    assert expected in msg and "onnxruntime-gpu" in msg
    assert "CPUExecutionProvider" in msg and "'auto'" in msg


def test_auto_reports_the_provider_that_ran(tiny_root):
    an = FaceAnalyzer.load(tiny_root, provider="auto", backend="onnxruntime")
    assert an.backend.det_provider == CPU and an.backend.rec_provider == CPU
    assert "on CPU" in an.report and "onnxruntime" in an.report and "antelopev2" in an.report
    assert "\n" not in an.report
    an = FaceAnalyzer.load(tiny_root, provider="cpu", backend="onnxruntime")
    assert "on CPU" in an.report


def test_silent_cuda_fallback_is_detected(monkeypatch):
    fake_ort(monkeypatch, [CUDA, CPU])
    asked = []

    def factory(path, providers):  # onnxruntime's behaviour when the CUDA libraries do not load
        asked.append(providers)
        return "model", FakeSession([CPU])

    started = prov.start("det.onnx", "auto", factory)
    assert started.active == CPU and asked == [[CUDA, CPU], [CPU]]
    assert started.notes == ["CUDA did not start"]
    with pytest.raises(FaceProviderError, match="is installed but did not start") as e:
        prov.start("det.onnx", "cuda", factory)
    assert "'auto'" in str(e.value)


def test_cuda_that_starts_is_kept(monkeypatch):
    fake_ort(monkeypatch, [CUDA, CPU])
    started = prov.start("det.onnx", "auto", lambda p, providers: ("m", FakeSession(providers)))
    assert started.active == CUDA and started.notes == []


def test_provider_that_raises_falls_through_in_auto(monkeypatch):
    fake_ort(monkeypatch, [CUDA, CPU])

    def factory(path, providers):
        if providers[0] == CUDA:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return "m", FakeSession(providers)

    started = prov.start("det.onnx", "auto", factory)
    assert started.active == CPU and started.notes == ["CUDA failed to start (RuntimeError)"]
    with pytest.raises(FaceProviderError, match="no CUDA-capable device"):
        prov.start("det.onnx", "cuda", factory)


def test_both_onnxruntime_packages_warn_once_with_fix(monkeypatch, caplog):
    monkeypatch.setattr(prov, "onnxruntime_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(prov, "_warned_duplicate", False)
    msg = prov.duplicate_onnxruntime_warning()
    assert "onnxruntime, onnxruntime-gpu" in msg
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg and "pip install onnxruntime-gpu" in msg
    with caplog.at_level(logging.WARNING, logger="moca.face"):
        prov.warn_duplicate_onnxruntime_once()
        prov.warn_duplicate_onnxruntime_once()
    assert sum("Several onnxruntime packages" in r.getMessage() for r in caplog.records) == 1


def test_single_onnxruntime_package_no_warning(monkeypatch):
    assert prov.duplicate_onnxruntime_warning(["onnxruntime-gpu"]) is None


def test_report_mentions_duplicate_and_passed_over_accelerators(tiny_root, monkeypatch):
    monkeypatch.setattr(prov, "onnxruntime_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    an = FaceAnalyzer.load(tiny_root, backend="onnxruntime")
    assert "several onnxruntime packages installed" in an.report
    an.backend.notes = ["CUDA did not start"]
    an2 = FaceAnalyzer(an.backend, an.pack)
    assert "(CUDA did not start)" in an2.report
