"""Optional mmpose backend: clear error without mmpose, lazy import, and the wrapper logic on mmpose-shaped models."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from repose_core.errors import MissingDependencyError
from repose_core.estimator import HigherHRNet, HigherHRNetConfig


def test_missing_mmpose_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mmpose", None)  # behave as if mmpose were absent even if installed
    from repose_core.estimator.mmpose_backend import load_mmpose_estimator

    with pytest.raises(MissingDependencyError, match=r"mmpose is not installed.*build_estimator.*mmpose==0\.29\.0"):
        load_mmpose_estimator(tmp_path / "cfg.py", tmp_path / "ckpt.pth")


def test_package_import_does_not_import_the_backend():
    code = ("import sys, repose_core.estimator; "
            "assert 'repose_core.estimator.mmpose_backend' not in sys.modules; assert 'mmpose' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _Backbone(nn.Module):  # mmpose 0.x HRNet returns a list with the highest-resolution branch
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return [self.net.backbone(x)]


class _Head0x(nn.Module):  # AEHigherResolutionHead: list input, list of [out0, out1]
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, feats):
        return self.net.head(feats[0])


class _Head1x(nn.Module):  # mmpose 1.x AssociativeEmbeddingHead: (heatmaps, tags) at 1/4 resolution
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, feats):
        out0 = self.net.final_layers[0](feats[0])
        return out0[:, :17], out0[:, 17:]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HigherHRNet(HigherHRNetConfig(width=32))


def test_wrapper_matches_builtin_on_higherhrnet_shaped_model(net):
    from repose_core.estimator.mmpose_backend import MMPoseEstimator

    mm = nn.Module()
    mm.backbone, mm.keypoint_head = _Backbone(net), _Head0x(net)
    est = MMPoseEstimator(mm)
    img = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        f1, h1 = est.features_and_heatmaps(img)
        f2, h2 = net.features_and_heatmaps(img)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(h1, h2)
    mm.train()
    est.train()
    assert not est.training and not mm.training and not any(p.requires_grad for p in est.parameters())


def test_wrapper_on_mmpose1x_style_head(net):
    from repose_core.estimator.mmpose_backend import MMPoseEstimator

    mm = nn.Module()
    mm.backbone, mm.head = _Backbone(net), _Head1x(net)
    est = MMPoseEstimator(mm)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    hm = est.heatmaps(x)
    assert hm.shape == (1, 17, 32, 32)
    hm.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_wrapper_rejects_non_mmpose_model():
    from repose_core.errors import InputError
    from repose_core.estimator.mmpose_backend import MMPoseEstimator

    with pytest.raises(InputError, match="'backbone'"):
        MMPoseEstimator(nn.Linear(2, 2))
