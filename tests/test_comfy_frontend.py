"""The shipped UI workflows in ComfyUI's real front end (headless Chromium): each template loads without a
schema alert, every node type is registered, and the front end's own UI -> API conversion (graphToPrompt)
gives exactly the API graph our generator writes (so every widget value sits in the right slot).
Needs COMFYUI_PATH and a `chromium` binary; skipped, with the reason shown, otherwise."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import shutil
import subprocess

import pytest

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
if CHROMIUM is None:
    pytest.skip("no chromium binary: the front-end check needs headless Chromium (apt-get install chromium)",
                allow_module_level=True)
aiohttp = pytest.importorskip("aiohttp")

spec = importlib.util.spec_from_file_location("make_workflows", H.REPO / "scripts" / "make_workflows.py")
mw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mw)

LOAD = """(async () => {
  document.querySelectorAll('.p-toast-message').forEach(e => e.remove());
  const wf = await (await fetch('/api/workflow_templates/ComfyUI-MoCA/%s.json')).json();
  await app.loadGraphData(wf);
  await new Promise(r => setTimeout(r, 500));
  const nodes = app.graph._nodes;
  const p = await app.graphToPrompt();
  return {toasts: [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText),
          missing: nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
          n: nodes.length, output: p.output};
})()"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    H.build_models(root, with_vae=False)
    srv = H.ComfyServer(root).start()
    port = H.free_port()
    chrome = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                               f"--user-data-dir={root / 'chrome'}", "--window-size=1600,1000", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield asyncio.run(_load_all(srv.url, port, root))
    finally:
        chrome.terminate()
        chrome.wait(timeout=20)
        srv.stop()


async def _load_all(url, port, root):
    async with aiohttp.ClientSession() as s:
        tabs = None
        for _ in range(100):
            try:
                async with s.get(f"http://127.0.0.1:{port}/json") as r:
                    tabs = await r.json()
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.3)
        assert tabs, "Chromium did not start"
        page = next(t for t in tabs if t["type"] == "page")
        async with s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method, **params):
                mid = next(ids)
                await ws.send_json({"id": mid, "method": method, "params": params})
                while True:
                    m = await ws.receive_json()
                    if m.get("id") == mid:
                        return m

            async def evaluate(expr):
                r = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
                assert "exceptionDetails" not in r["result"], r["result"]["exceptionDetails"]
                return r["result"]["result"].get("value")

            await call("Page.navigate", url=url)
            for _ in range(240):
                await asyncio.sleep(0.5)
                if await evaluate("!!(window.app && window.app.graph && window.LiteGraph)"):
                    break
            await asyncio.sleep(2)
            results = {}
            for g in mw.UI_GRAPHS:
                name = g().name
                results[name] = await evaluate(LOAD % name)
                shot = await call("Page.captureScreenshot", format="png")
                (root / f"{name}.png").write_bytes(base64.b64decode(shot["result"]["data"]))
            return results


@pytest.mark.parametrize("graph", mw.UI_GRAPHS, ids=lambda g: g().name)
def test_workflow_loads_in_the_front_end_and_converts_to_our_api_graph(loaded, graph):
    g = graph()
    res = loaded[g.name]
    assert res["toasts"] == [], res["toasts"]
    assert res["missing"] == [] and res["n"] == len(g.nodes)
    want, got = g.api(), res["output"]
    assert sorted(got) == sorted(want)
    for nid, node in want.items():
        assert got[nid]["class_type"] == node["class_type"]
        assert got[nid]["inputs"] == node["inputs"], f"node {nid} {node['class_type']}"
