"""The two-person toy template (example_workflows/moca_toy_two_people_cpu.json) in a real ComfyUI, on the CPU:
two MoCA Identity Region nodes (left to right) into MoCA Apply, MoCA Identity Score on both people. It runs,
makes a 17-frame video, the identities change it, and the score reports both people. How well the people stay
apart is measured by `python -m moca_model toybench --multi`, not here. Skipped, with the reason, while the toy
models are not in this checkout (`make toy` builds them), and on ComfyUI < 0.8.0 (the narrow toy VAE)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

API = H.REPO / "example_workflows" / "api" / "moca_toy_two_people_cpu_api.json"


def _toy_missing() -> list[str]:
    from moca_model.toy.pipeline import missing_files
    return missing_files()


def _version() -> tuple:
    import comfyui_version
    return tuple(int(p) for p in comfyui_version.__version__.split(".")[:3])


if _toy_missing():
    pytest.skip("the toy world's models are not all in this checkout (" + "; ".join(_toy_missing()) +
                "): `make toy` builds them", allow_module_level=True)
if _version() < (0, 8, 0):
    pytest.skip("ComfyUI < 0.8.0 cannot load the narrow toy VAE (tests/test_comfy_toy.py checks the notice)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = H.ComfyServer(tmp_path_factory.mktemp("comfy_toy_two")).start()
    yield srv
    srv.stop()


def _node(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def test_two_person_template_runs_and_scores_both_people(server):
    prompt = json.loads(API.read_text())
    assert len(_node(prompt, "MoCAIdentityRegion")) == 2
    entry = server.run_prompt(prompt, timeout=400)
    err = H.execution_error(entry)
    assert entry["status"]["status_str"] == "success", json.dumps(err, indent=1)[:4000] if err else server.tail()
    frames = H.saved_video(server, entry)
    assert frames.shape == (17, 128, 128, 3), frames.shape
    score = entry["outputs"][_node(prompt, "MoCAIdentityScore")[0]]
    text = "\n".join(str(t) for t in score.get("text", []))
    print("\n" + text)
    assert "person 1: own" in text and "person 2: own" in text and "swap rate" in text, text

    off = copy.deepcopy(prompt)
    off[_node(off, "MoCAExpertMixing")[0]]["inputs"]["identity_strength"] = 0.0
    off[_node(off, "SaveVideo")[0]]["inputs"]["filename_prefix"] = "video/MoCA_toy_two_without"
    without = H.saved_video(server, server.run_prompt(off, timeout=400))
    assert np.abs(without.astype(float) - frames.astype(float)).mean() > 1.0, "the identities do not change the video"
