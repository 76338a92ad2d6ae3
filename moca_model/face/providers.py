"""onnxruntime execution providers: choose, start, and report what actually ran.

``auto`` tries CUDA first and keeps it only if a session really starts on it (onnxruntime silently falls
back to CPU when the CUDA/cuDNN libraries do not match its build), then the platform's accelerator
(ROCm / MIGraphX, DirectML; CoreML only for fixed-shape models), then CPU. An explicit choice either runs
on that provider or raises :class:`FaceProviderError` with the fix.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .errors import FaceBackendError, FaceProviderError

log = logging.getLogger("moca.face")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
PROVIDER_CHOICES = ("auto", "cuda", "cpu", "tensorrt", "rocm", "migraphx", "directml", "coreml", "openvino")
# Accelerators ``auto`` tries, in order. CoreML is tried for fixed-shape models only: a dynamic-shape
# detector on CoreML can abort the process inside the provider instead of raising.
AUTO_ORDER = (CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider",
              "CoreMLExecutionProvider")
_FIXED_SHAPE_ONLY = {"CoreMLExecutionProvider"}
# A provider chain: the accelerator plus what it needs behind it.
_CHAIN = {"TensorrtExecutionProvider": ["TensorrtExecutionProvider", CUDA, CPU]}
# pip distributions that all install the same ``onnxruntime`` module
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-rocm", "onnxruntime-silicon", "onnxruntime-qnn", "onnxruntime-migraphx")

_warned_duplicate = False


def import_onnxruntime():
    """Import onnxruntime or raise an error that says which package to install."""
    try:
        import onnxruntime
    except Exception as e:  # ImportError, or a DLL load failure surfacing as OSError
        raise FaceBackendError(
            f"onnxruntime cannot be imported ({type(e).__name__}: {e}). Install one flavour with ComfyUI's "
            f"python: `python -m pip install onnxruntime-gpu` (NVIDIA) or `python -m pip install onnxruntime` "
            f"(CPU, macOS). Do not install both."
        ) from e
    return onnxruntime


def onnxruntime_distributions() -> list[str]:
    """The onnxruntime pip distributions installed in this environment."""
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info must not break face loading
            continue
        found.append(name)
    return found


def duplicate_onnxruntime_warning(dists: list[str] | None = None) -> str | None:
    """A warning text when several onnxruntime flavours are installed side by side, else None."""
    dists = onnxruntime_distributions() if dists is None else dists
    if len(dists) < 2:
        return None
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in dists else dists[-1]
    return (
        f"Several onnxruntime packages are installed ({', '.join(dists)}). They share one `onnxruntime` "
        f"module and the one installed last wins, so GPU providers may silently be missing. Fix, with "
        f"ComfyUI's python: `python -m pip uninstall -y {' '.join(dists)}` then "
        f"`python -m pip install {keep}`."
    )


def warn_duplicate_onnxruntime_once() -> str | None:
    """Log :func:`duplicate_onnxruntime_warning` once per process; return it (or None)."""
    global _warned_duplicate
    msg = duplicate_onnxruntime_warning()
    if msg and not _warned_duplicate:
        _warned_duplicate = True
        log.warning("MoCA face: %s", msg)
    return msg


def normalize_choice(choice: str) -> str:
    """``"auto"`` or a full provider name, from a short alias (``cuda``) or a full name."""
    c = str(choice or "auto").strip()
    if c.lower() == "auto":
        return "auto"
    if c.lower() in ALIASES:
        return ALIASES[c.lower()]
    if c.endswith("ExecutionProvider"):
        return c
    raise FaceProviderError(
        f"Unknown execution provider {choice!r}. Choose one of {', '.join(PROVIDER_CHOICES)} "
        f"or a full onnxruntime provider name such as 'CUDAExecutionProvider'."
    )


def _install_hint(provider: str) -> str:
    if provider in (CUDA, "TensorrtExecutionProvider"):
        return ("It needs the onnxruntime-gpu package (and only that one): `python -m pip uninstall -y "
                "onnxruntime onnxruntime-gpu` then `python -m pip install onnxruntime-gpu`.")
    if provider == "DmlExecutionProvider":
        return "It needs onnxruntime-directml (Windows) instead of onnxruntime."
    if provider == "OpenVINOExecutionProvider":
        return "It needs onnxruntime-openvino instead of onnxruntime."
    if provider == "CoreMLExecutionProvider":
        return "It ships with the macOS onnxruntime wheels."
    if provider in ("ROCMExecutionProvider", "MIGraphXExecutionProvider"):
        return "It needs an AMD ROCm build of onnxruntime."
    return ""


def candidates(choice: str, available: list[str], fixed_shape: bool) -> list[list[str]]:
    """Provider lists to try in order for ``choice`` (already normalised)."""
    if choice != "auto":
        if choice not in available:
            dup = duplicate_onnxruntime_warning()
            raise FaceProviderError(
                f"Execution provider {choice} is not available in this onnxruntime build "
                f"(available: {', '.join(available)}). {_install_hint(choice)}"
                + (f" {dup}" if dup else "") + " Or choose provider 'auto'."
            )
        chain = _CHAIN.get(choice, [choice, CPU])
        return [list(dict.fromkeys(p for p in chain if p in available or p == choice))]
    out = []
    for p in AUTO_ORDER:
        if p in available and (fixed_shape or p not in _FIXED_SHAPE_ONLY):
            out.append([p, CPU] if CPU in available else [p])
    out.append([CPU])
    return out


@dataclass
class StartedSession:
    """A model started on a provider: the caller's object, its onnxruntime session and what ran."""

    model: Any
    session: Any
    active: str  # the provider that runs the model
    notes: list  # why accelerators were passed over (auto) - short phrases


def start(path, choice: str, factory: Callable[[str, list], tuple], fixed_shape: bool = False) -> StartedSession:
    """Create a model with ``factory(path, providers) -> (model, session)`` on the best provider.

    A provider counts only if ``session.get_providers()[0]`` is that provider after creation.
    """
    ort = import_onnxruntime()
    available = list(ort.get_available_providers())
    choice = normalize_choice(choice)
    notes: list[str] = []
    last_error: Exception | None = None
    want = CPU
    for providers in candidates(choice, available, fixed_shape):
        want = providers[0]
        try:
            model, session = factory(str(path), providers)
        except Exception as e:  # provider failed hard; try the next one
            last_error = e
            if choice != "auto" or want == CPU:
                break
            notes.append(f"{_short(want)} failed to start ({type(e).__name__})")
            continue
        active = list(session.get_providers())[0]
        if active == want:
            return StartedSession(model, session, active, notes)
        if choice != "auto":
            raise FaceProviderError(
                f"{want} is installed but did not start for {path} (onnxruntime fell back to {active}; its own "
                f"console message above says why - usually CUDA/cuDNN libraries that do not match the "
                f"onnxruntime-gpu build). Install the onnxruntime-gpu build for your CUDA version, or choose "
                f"provider 'auto' to run on {active}."
            )
        notes.append(f"{_short(want)} did not start")
    if last_error is not None:
        msg = str(last_error)
        if want == CPU or isinstance(last_error, FileNotFoundError) or any(
                k in msg for k in ("INVALID_PROTOBUF", "NO_SUCHFILE", "INVALID_GRAPH", "Protobuf")):
            from .errors import FacePackError
            raise FacePackError(
                f"{path} cannot be loaded by onnxruntime ({type(last_error).__name__}: {last_error}). The file "
                f"is damaged or not an ONNX model: replace it with a fresh copy from the pack zip."
            ) from last_error
        raise FaceProviderError(
            f"Could not start {path} on {choice if choice != 'auto' else 'any provider'}: "
            f"{type(last_error).__name__}: {last_error}"
        ) from last_error
    raise FaceProviderError(f"Could not start {path} on any provider ({'; '.join(notes)}).")


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def describe(provider: str) -> str:
    """Short provider name for reports (``CUDA``, ``CPU``, ...)."""
    return _short(provider)


def ort_version() -> str:
    mod = sys.modules.get("onnxruntime")
    return getattr(mod, "__version__", "?") if mod else "?"
