"""Fixture `comfy`: a real ComfyUI server (the host built by scripts/bootstrap.sh) with this checkout loaded as a
custom node pack. One server is shared by all tests of this folder: it starts with the first test that asks for it
and is stopped (by PID) after the last test that uses it, so it does not idle through the rest of the suite (a test
that asks for it again after that gets a fresh one).
Tests in this folder are marked `comfy`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_harness import ComfyServer

HERE = Path(__file__).resolve().parent
RUN_HINT = ("run the suite with `bash run.sh test`: it builds the ComfyUI host and sets REPOSE_COMFY "
            "(or set REPOSE_COMFY to a ComfyUI 0.3.75 source tree and run pytest with a python that has its "
            "requirements installed)")

_shared: dict = {}   # "server": the running ComfyServer, "error": why it could not start


def _in_this_folder(item) -> bool:
    return item is not None and HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_this_folder(item):
            item.add_marker(pytest.mark.comfy)
    users = [item.nodeid for item in items if "comfy" in getattr(item, "fixturenames", ())]
    _shared["last_user"] = users[-1] if users else None


def _stop_server() -> None:
    server = _shared.pop("server", None)
    if server is not None:
        server.stop()


def pytest_runtest_teardown(item, nextitem):
    # After the last test that uses the server (or when leaving this folder), free its memory for the rest.
    if item.nodeid == _shared.get("last_user") or not _in_this_folder(nextitem):
        _stop_server()


def pytest_sessionfinish(session, exitstatus):
    _stop_server()


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    """ComfyUI source tree from $REPOSE_COMFY; fails (never skips) when it is not set."""
    value = os.environ.get("REPOSE_COMFY")
    if not value:
        pytest.fail(f"REPOSE_COMFY is not set, so the real-ComfyUI tests cannot run; {RUN_HINT}", pytrace=False)
    path = Path(value)
    if not (path / "main.py").is_file():
        pytest.fail(f"REPOSE_COMFY={value} has no main.py; {RUN_HINT}", pytrace=False)
    return path


@pytest.fixture
def comfy(comfy_dir, repo_root, tmp_path_factory) -> ComfyServer:
    """The shared running ComfyUI server (see comfy_harness.ComfyServer for its helpers and folders)."""
    if "error" in _shared:  # do not retry a failed start for every test
        pytest.fail(f"ComfyUI did not start (see the first failing test): {_shared['error'][:300]}", pytrace=False)
    server = _shared.get("server")
    if server is None or server.proc is None or server.proc.poll() is not None:
        server = ComfyServer(comfy_dir, repo_root, tmp_path_factory.mktemp("comfyui"))
        try:
            server.start()
        except Exception as err:
            _shared["error"] = str(err)
            raise
        _shared["server"] = server
    return server
