"""Fixtures shared by the whole suite: the repository root and the shared reference fixtures.

Run the suite with `bash run.sh test` (it builds the environment and the ComfyUI host the tests/comfyui_host tests need).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# `import repose_core` must work however pytest was launched (python -m pytest adds the cwd, the pytest script does not).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

try:  # a loaded 2-core CI machine makes hypothesis' per-example deadline flaky; example counts stay per test
    from hypothesis import settings

    settings.register_profile("repose", deadline=None)
    settings.load_profile("repose")
except ImportError:  # hypothesis is in requirements-dev.txt; tests that need it import it themselves
    pass


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root of this checkout (any clone location)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_fixtures(repo_root: Path) -> Path:
    """../shared/fixtures beside the checkout (reference tensors; see its README.md). Fails, never skips, if absent."""
    path = repo_root.parent / "shared" / "fixtures"
    if not path.is_dir():
        pytest.fail(
            f"reference fixtures not found: expected the folder {path} (../shared/fixtures next to the repository "
            f"checkout {repo_root}). Clone the repository beside the 'shared' folder that holds fixtures/README.md.",
            pytrace=False,
        )
    return path
