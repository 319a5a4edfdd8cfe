"""A real, headless ComfyUI server with this checkout loaded as a custom node pack, for end-to-end tests.

Layout of the server's private base directory (a fresh temp dir per test session):
    base/custom_nodes/comfyui-repose -> <this checkout>   (symlink; the pack is loaded the way users install it)
    base/{input,output,temp,user}/                         (ComfyUI's own folders, via --base-directory and flags)
    base/models/<name>/                                    (ComfyUI's default model folders)
    extra_models/<name>/  for name in MODEL_FOLDERS        (given to ComfyUI by an extra_model_paths yaml; tests
                                                            write tiny checkpoints here)
The server log goes to base/comfyui.log. The server is stopped by its PID.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

PACK_DIR_NAME = "comfyui-repose"
# ComfyUI's module name for the pack (RELATIVE_PYTHON_MODULE, reported as python_module by /object_info).
PACK_PYTHON_MODULE = f"custom_nodes.{PACK_DIR_NAME}"
# Model folders of the pack that the extra_model_paths yaml points into the temp dir.
MODEL_FOLDERS = ("repose", "pose_estimators")


class ComfyError(AssertionError):
    """The server did not start, refused a prompt, or a prompt did not finish; carries the end of the log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Handle on a running ComfyUI server (see start())."""

    def __init__(self, comfy_dir: Path, repo_root: Path, workdir: Path, python: str = sys.executable):
        self.comfy_dir = Path(comfy_dir)
        self.repo_root = Path(repo_root)
        self.workdir = Path(workdir)
        self.python = python
        self.base = self.workdir / "base"
        self.input_dir = self.base / "input"
        self.output_dir = self.base / "output"
        self.temp_dir = self.base / "temp"
        self.user_dir = self.base / "user"
        self.custom_nodes_dir = self.base / "custom_nodes"
        self.pack_link = self.custom_nodes_dir / PACK_DIR_NAME
        self.extra_models_dir = self.workdir / "extra_models"
        self.extra_paths_yaml = self.workdir / "extra_model_paths.yaml"
        self.log_path = self.base / "comfyui.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # ---------------------------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 300.0) -> "ComfyServer":
        """Prepare the folders, launch main.py headless on a free port and wait until /system_stats answers."""
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyError(f"no ComfyUI main.py in {self.comfy_dir}; run the tests with `bash run.sh test`")
        for d in (self.input_dir, self.output_dir, self.user_dir, self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FOLDERS:
            self.model_dir(name).mkdir(parents=True, exist_ok=True)
        self._link_pack()
        self.extra_paths_yaml.write_text(
            "repose_tests:\n"
            f"  base_path: {self.extra_models_dir}\n"
            + "".join(f"  {name}: {name}\n" for name in MODEL_FOLDERS)
        )
        self.port = free_port()
        cmd = [
            self.python, "main.py",
            "--cpu", "--use-pytorch-cross-attention",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes",
            "--base-directory", str(self.base),
            "--input-directory", str(self.input_dir),
            "--output-directory", str(self.output_dir),
            "--temp-directory", str(self.base),  # ComfyUI appends "temp" (and empties it at start and exit)
            "--user-directory", str(self.user_dir),
            "--database-url", "sqlite:///:memory:",
            "--extra-model-paths-config", str(self.extra_paths_yaml),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_file = open(self.log_path, "w")
        self._log_file.write("$ " + " ".join(cmd) + "\n")
        self._log_file.flush()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during startup.\n{self.log_tail()}")
            try:
                if requests.get(self.url("/system_stats"), timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) by its PID and remove the pack symlink."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._unlink_pack()

    def _link_pack(self) -> None:
        self._unlink_pack()
        self.pack_link.symlink_to(self.repo_root, target_is_directory=True)

    def _unlink_pack(self) -> None:
        # Only ever remove the link itself, never what it points to.
        if self.pack_link.is_symlink():
            self.pack_link.unlink()
        elif self.pack_link.exists():
            raise ComfyError(f"{self.pack_link} exists and is not a symlink; refusing to touch it")

    # ---------------------------------------------------------------------------------------------------- helpers
    def model_dir(self, name: str) -> Path:
        """Folder (from the extra_model_paths yaml) that ComfyUI searches for model folder `name`."""
        return self.extra_models_dir / name

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route}"

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def get_json(self, route: str, **params):
        r = requests.get(self.url(route), params=params, timeout=60)
        r.raise_for_status()
        return r.json()

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_class>."""
        return self.get_json("/object_info" if node_class is None else f"/object_info/{node_class}")

    def pack_nodes(self) -> dict:
        """The /object_info entries of the nodes registered by this pack."""
        return {k: v for k, v in self.object_info().items() if v.get("python_module") == PACK_PYTHON_MODULE}

    def post_prompt(self, api_prompt: dict, client_id: str | None = None, allow_node_errors: bool = False) -> str:
        """POST an API-format prompt; returns its prompt_id. A validation failure raises with node_errors; so does
        a partial one (ComfyUI queues the valid outputs and reports the others in node_errors) unless allowed."""
        body = {"prompt": api_prompt, "client_id": client_id or uuid.uuid4().hex}
        # json.dumps writes NaN / Infinity as the browser's JSON.stringify never does but Python's json (the server's
        # parser) reads: how a careless or hostile client gets non-finite numbers into a prompt
        r = requests.post(self.url("/prompt"), data=json.dumps(body), headers={"Content-Type": "application/json"},
                          timeout=60)
        if r.status_code != 200:
            raise ComfyError(f"POST /prompt refused ({r.status_code}): {r.text}")
        answer = r.json()
        if answer.get("node_errors") and not allow_node_errors:
            raise ComfyError(f"POST /prompt queued only part of the prompt: {json.dumps(answer['node_errors'])}")
        return answer["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll /history/<prompt_id> until the prompt finished (success or error); returns its history entry
        (keys: prompt, outputs, status{status_str, completed, messages}, meta)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:  # ComfyUI adds the entry once the prompt finished (success, error or interrupted)
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running prompt {prompt_id}.\n{self.log_tail()}")
            time.sleep(0.2)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n{self.log_tail()}")

    def run_prompt(self, api_prompt: dict, timeout: float = 120.0, expect: str = "success") -> dict:
        """post_prompt + wait_history, asserting the final status (with the error message and log tail if not)."""
        entry = self.wait_history(self.post_prompt(api_prompt), timeout)
        status = entry["status"].get("status_str")
        if expect is not None and status != expect:
            raise ComfyError(f"prompt finished with status {status!r}, expected {expect!r}: "
                             f"{json.dumps(execution_error(entry), indent=1)}\n{self.log_tail()}")
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stops the running prompt (only if it is `prompt_id`, when given). Nodes notice it at
        their next comfy.model_management.throw_exception_if_processing_interrupted() (nodes.utils.ComfyProgress)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        requests.post(self.url("/interrupt"), json=body, timeout=30).raise_for_status()

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """GET /view: the bytes of an image the server wrote."""
        r = requests.get(self.url("/view"), params={"filename": filename, "subfolder": subfolder, "type": type},
                         timeout=60)
        r.raise_for_status()
        return r.content

    def output_images(self, entry: dict, node_id: str) -> list[Path]:
        """Paths of the images that SaveImage/PreviewImage node `node_id` wrote, from a history entry."""
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        images = entry["outputs"].get(node_id, {}).get("images", [])
        return [roots[i["type"]] / i.get("subfolder", "") / i["filename"] for i in images]


class ProgressWatcher:
    """The server's websocket messages for one client id, collected by a background thread (aiohttp, which ComfyUI
    itself depends on). Connect before posting the prompt: the server does not replay messages.

        with ProgressWatcher(server) as watch:
            pid = server.post_prompt(prompt, client_id=watch.client_id)
            watch.wait_for(lambda m: m["type"] == "progress" and m["data"]["node"] == "5")
    """

    def __init__(self, server: "ComfyServer"):
        import threading

        self.server, self.client_id = server, uuid.uuid4().hex
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        import asyncio

        import aiohttp

        async def main():
            url = self.server.url(f"/ws?clientId={self.client_id}").replace("http://", "ws://", 1)
            async with aiohttp.ClientSession() as session, session.ws_connect(url, heartbeat=30) as ws:
                self._connected.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with self._cond:
                            self.messages.append(json.loads(msg.data))
                            self._cond.notify_all()
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break

        try:
            asyncio.run(main())
        except BaseException as e:  # reported by wait_for
            self._error = e
            self._connected.set()

    def __enter__(self) -> "ProgressWatcher":
        self._thread.start()
        if not self._connected.wait(60) or self._error is not None:
            raise ComfyError(f"could not open the websocket: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for(self, predicate, timeout: float = 300.0) -> dict:
        """The first message (so far or to come) for which predicate(message) is true; ComfyError on timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for m in self.messages[seen:]:
                    if predicate(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    raise ComfyError(f"no matching websocket message within {timeout:.0f} s (error {self._error!r}); "
                                     f"last: {self.messages[-3:]}\n{self.server.log_tail()}")
                self._cond.wait(min(left, 1.0))


def execution_error(entry: dict) -> dict | None:
    """The 'execution_error' message data of a history entry (exception_type, exception_message, node_type ...)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def import_pack_like_comfyui(pack_dir: Path, module_name: str | None = None):
    """Import the pack the way ComfyUI's load_custom_node does: a package named after its filesystem path ('.'
    replaced by '_x_'), so only relative imports resolve. A distinct `module_name` gives a fresh, independent copy."""
    import importlib.util

    pack_dir = Path(pack_dir)
    name = module_name or str(pack_dir).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, pack_dir / "__init__.py",
                                                  submodule_search_locations=[str(pack_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
