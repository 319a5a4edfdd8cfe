"""Fixtures shared by the whole suite: the repository root and the shared reference fixtures.

Run the suite with `bash run.sh test` (it builds the environment and the ComfyUI host the tests/comfyui_host tests need).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# `import repose_core` must work however pytest was launched (python -m pytest adds the cwd, the pytest script does not).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# ... and in the scripts the tests start (`python train/<script>.py`), as `bash run.sh` or an install provides it
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])

try:  # a loaded 2-core CI machine makes hypothesis' per-example deadline flaky; example counts stay per test
    from hypothesis import settings

    settings.register_profile("repose", deadline=None)
    settings.load_profile("repose")
except ImportError:  # hypothesis is in requirements-dev.txt; tests that need it import it themselves
    pass


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: on a shared 2-core machine one intra-op thread is much faster than two contending ones.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`; the count is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root of this checkout (any clone location)."""
    return REPO_ROOT


# Reference fixtures (see tests/data/fixtures/README.md). The small ones live in the repository, so a fresh clone runs
# every test; the 65 MB HigherHRNet-W32 fixture stays in ../shared/fixtures beside the checkout.
FIXTURES = REPO_ROOT / "tests" / "data" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """The reference fixtures kept in the repository (tests/data/fixtures: PIDM small, HigherHRNet-W8, key layouts)."""
    missing = [name for name in ("pidm_small.safetensors", "pidm_small.json", "pidm_keys.json", "higherhrnet_keys.json",
                                 "higherhrnet_w8_mmpose.safetensors", "higherhrnet_w8_mmpose.json")
               if not (FIXTURES / name).is_file()]
    if missing:
        pytest.fail(f"reference fixtures missing from the checkout: {', '.join(missing)} in {FIXTURES}; they are "
                    f"part of the repository (git checkout them again)", pytrace=False)
    return FIXTURES


@pytest.fixture(scope="session")
def import_pack():
    """Returns a function giving a fresh, independent copy of the node pack, imported the way ComfyUI imports
    custom nodes (tests/comfyui_host/comfy_harness.py, loaded by path: that folder is not a package)."""
    import importlib.util
    import uuid

    path = REPO_ROOT / "tests" / "comfyui_host" / "comfy_harness.py"
    spec = importlib.util.spec_from_file_location("repose_comfy_harness", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return lambda: harness.import_pack_like_comfyui(REPO_ROOT, f"{REPO_ROOT}_x_{uuid.uuid4().hex}".replace(".", "_x_"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A tiny procedural dataset in the DeepFashion PATN layout (2 training identities x 2 poses, 1 test identity,
    64x44) for the data and trainer tests; read-only."""
    from repose_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, size=(64, 44), n_train_ids=2, n_test_ids=1, poses_per_id=2, seed=0)
    return root
