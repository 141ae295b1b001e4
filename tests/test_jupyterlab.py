"""JupyterLab as a reader meets it: ``jupyter lab`` starts headless in the project's environment,
serves the app with the widget manager extension, opens chapter 1 through its REST API, runs it in
a kernel, and the chapter's explorer renders and redraws when a control moves.

The test speaks the protocol JupyterLab's front end speaks: REST for the server, the contents and
the session, and the kernel's websocket for execution and widget messages. A slider moved in the
browser is a ``comm_msg`` that updates the slider's value; the explorer answers by redrawing its
figure into its Output widget.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")
tornado_ws = pytest.importorskip("tornado.websocket")

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "book/01_memory_bank.ipynb"
TOKEN = uuid.uuid4().hex
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    exe = Path(sys.executable).parent / "jupyter-lab"
    if not exe.exists() and shutil.which("jupyter-lab") is None:
        pytest.skip("jupyter-lab is not installed (scripts/env.sh installs requirements-dev.txt)")
    home = tmp_path_factory.mktemp("jupyter")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "MPLBACKEND": "Agg"}
    port = free_port()
    cmd = [str(exe) if exe.exists() else "jupyter-lab", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ROOT}",
           "--ServerApp.port_retries=0"]
    log = home / "lab.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 60 s for the server to answer
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if api(base, "/api/status")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"jupyter lab did not answer in 60 s:\n{log.read_text()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_lab_serves_the_app_with_the_widget_manager(lab):
    status, page = api(lab, "/lab")
    text = page.decode()
    assert status == 200 and "jupyter-config-data" in text
    config = json.loads(text.split('id="jupyter-config-data"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    assert config["appName"] == "JupyterLab"
    extensions = {e["name"] for e in config.get("federated_extensions", [])}
    assert "@jupyter-widgets/jupyterlab-manager" in extensions, sorted(extensions)


class Kernel:
    """The kernel's websocket, as JupyterLab's front end uses it (JSON messages, protocol 5.3)."""

    def __init__(self, ws):
        self.ws, self.session, self.iopub = ws, uuid.uuid4().hex, []

    def message(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {"header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": self.session, "msg_type": msg_type,
                           "version": "5.3", "date": ""}, "parent_header": {}, "metadata": {}, "content": content,
                "channel": channel, "buffers": []}

    async def send(self, msg: dict) -> str:
        await self.ws.write_message(json.dumps(msg))
        return msg["header"]["msg_id"]

    async def until_idle(self, msg_id: str, timeout: float) -> list[dict]:
        """Every iopub message answering `msg_id`, up to its idle status; fails on an error."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), timeout=max(deadline - time.monotonic(), 0.1))
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                pytest.fail("a chapter cell failed: " + "\n".join(msg["content"]["traceback"])[-3000:])
            if msg["channel"] == "iopub":
                got.append(msg)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return got

    async def run(self, code: str, timeout: float = 300) -> list[dict]:
        return await self.until_idle(await self.send(self.message(
            "execute_request", {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                "allow_stdin": False, "stop_on_error": True})), timeout)


def pngs_in_outputs(msgs: list[dict], output_ids: set[str]) -> list[str]:
    """The PNGs shown in the Output widgets `output_ids`. Inside ``with out:`` the kernel sets the
    widget's ``msg_id`` to the request being handled, and the front end routes the displays of that
    request into the widget; an Output without a front end keeps them in its ``outputs`` state."""
    capturing, found = set(), []
    for m in msgs:
        if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] in output_ids:
            state = m["content"]["data"].get("state", {})
            if state.get("msg_id"):
                capturing.add(state["msg_id"])
            found += [o["data"]["image/png"] for o in state.get("outputs", []) if "image/png" in o.get("data", {})]
        elif m["msg_type"] == "display_data" and m["parent_header"]["msg_id"] in capturing:
            if "image/png" in m["content"]["data"]:
                found.append(m["content"]["data"]["image/png"])
    return found


@pytest.mark.slow
def test_chapter_runs_in_lab_and_its_explorer_redraws(lab):
    status, body = api(lab, f"/api/contents/{CHAPTER}")
    nb = json.loads(body)
    assert status == 200 and nb["type"] == "notebook"
    cells = [c for c in nb["content"]["cells"] if c["cell_type"] == "code"]
    explorer_cells = [i for i, c in enumerate(cells) if "widgets.explorer(" in c["source"]]
    assert explorer_cells, "chapter 1 has no explorer cell"
    _, body = api(lab, "/api/sessions", "POST", {"path": CHAPTER, "type": "notebook", "name": "",
                                                 "kernel": {"name": "python3"}})
    session = json.loads(body)
    kernel_id = session["kernel"]["id"]
    try:
        asyncio.run(drive(lab, kernel_id, cells, explorer_cells[0]))
    finally:
        api(lab, f"/api/sessions/{session['id']}", "DELETE")


async def drive(base: str, kernel_id: str, cells: list[dict], explorer: int) -> None:
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?token={TOKEN}"
    ws = await tornado_ws.websocket_connect(url)
    k = Kernel(ws)
    for c in cells[:explorer]:
        await k.run(c["source"])
    msgs = await k.run(cells[explorer]["source"])
    views = [m for m in msgs if m["msg_type"] in ("display_data", "execute_result") and WIDGET_VIEW in m["content"]["data"]]
    assert views, "the explorer cell displayed no widget"
    opened = {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in msgs
              if m["msg_type"] == "comm_open" and m["content"]["target_name"] == "jupyter.widget"}
    sliders = [cid for cid, st in opened.items() if st.get("_model_name") == "IntSliderModel"]
    outputs = {cid for cid, st in opened.items() if st.get("_model_name") == "OutputModel"}
    assert sliders and outputs, sorted(st.get("_model_name") for st in opened.values())
    first = pngs_in_outputs(msgs, outputs)
    assert first, "the explorer drew no figure"
    segment = sliders[0]  # the first control: the segment slider
    state = opened[segment]
    moved = state["min"] if state["value"] != state["min"] else state["max"]
    msg_id = await k.send(k.message("comm_msg", {"comm_id": segment, "data": {"method": "update", "state": {"value": moved},
                                                                               "buffer_paths": []}}))
    redrawn = pngs_in_outputs(await k.until_idle(msg_id, 120), outputs)
    assert redrawn, "moving the segment slider did not redraw the figure"
    assert redrawn[-1] != first[-1], "the redrawn figure is the same picture"
    ws.close()
