"""bench/gpu_suite.sh: argument handling and a --dry-run of every section on CPU (tiny preset, 2 steps).

The figures themselves need a CUDA GPU; this checks that the unattended run cannot fail on a code path."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]   # (not from conftest: another conftest.py shadows the name)

SCRIPT = REPO_ROOT / "bench" / "gpu_suite.sh"


def run_suite(*args, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO_ROOT)


def test_help_and_argument_errors(tmp_path):
    res = run_suite("--help")
    assert res.returncode == 0 and "--quick" in res.stdout and "--dry-run" in res.stdout
    res = run_suite("--dry-run")  # --out is required
    assert res.returncode == 2 and "--out" in res.stderr
    res = run_suite("--dry-run", "--steps", "0", "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "--steps" in res.stderr
    res = run_suite("--sections", "nope", "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "--sections" in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_and_names_dry_run(tmp_path):
    res = run_suite("--quick", "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "--dry-run" in res.stderr and not (tmp_path / "x.json").exists()


def test_dry_run_exercises_every_section(tmp_path):
    out = tmp_path / "sub" / "suite.json"
    res = run_suite("--dry-run", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["errors"] == [] and result["skipped"] == []
    sections = {c["section"] for c in result["cases"]}
    assert sections == {"sampling", "cfg", "rpa", "train"}
    sampling = [c for c in result["cases"] if c["section"] == "sampling"]
    assert {c["guided"] for c in sampling} == {False, True} and all(c["finite"] for c in sampling)
    assert all(c["seconds_per_image"] > 0 for c in sampling)
    cfg = [c for c in result["cases"] if c["section"] == "cfg"]
    assert all(c["time_ratio_batched_over_sequential"] > 0 for c in cfg)
    rpa = [c for c in result["cases"] if c["section"] == "rpa"]
    assert {c["mode"] for c in rpa} == {"forward", "forward_backward"}
    assert all(c["before_ms"] > 0 and c["after_ms"] > 0 for c in rpa)
    train = [c for c in result["cases"] if c["section"] == "train"]
    assert train[0]["pairs_per_s"] > 0


def test_budget_skips_cases_and_keeps_the_json(tmp_path):
    out = tmp_path / "suite.json"
    res = run_suite("--dry-run", "--budget-s", "0", "--sections", "cfg", "--out", str(out))
    assert res.returncode == 0
    result = json.loads(out.read_text())
    assert result["cases"] == [] and result["skipped"] == ["cfg tiny float32"]
