"""Classifier-free guidance combiners, batched eps_fn construction and condition dropout."""
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from repose_core.diffusion import cfg_combine, cfg_combine_disentangled, drop_condition, make_eps_fn
from repose_core.errors import InputError


@dataclass(frozen=True)
class FakeCond:  # mirrors DESIGN.md's AppearanceCond
    features: list
    flow: torch.Tensor | None
    warped: list


class FakeModel:
    """Deterministic stand-in for PoseTransferModel.forward; records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x_t, t, pose_map, cond):
        self.batches.append(x_t.shape[0])
        B = x_t.shape[0]
        assert t.shape == (B,) and pose_map.shape[0] == B and cond.features[0].shape[0] == B
        app = cond.features[0].mean(dim=(1, 2, 3)).view(B, 1, 1, 1) + cond.features[1].mean(dim=1).view(B, 1, 1, 1)
        flow = 0 if cond.flow is None else cond.flow.mean(dim=(1, 2, 3)).view(B, 1, 1, 1)
        eps = 0.5 * x_t + pose_map.mean(dim=1, keepdim=True) * 2.0 + app + flow + t.view(B, 1, 1, 1) / 1000
        v = torch.tanh(x_t + app)
        return torch.cat([eps, v], dim=1)  # (B, 2C, H, W)


def make_inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    x = r(B, 3, 4, 4)
    t = torch.tensor([10, 500])[:B]
    pose = r(B, 5, 4, 4)
    cond = FakeCond(features=[r(B, 8, 4, 4), r(B, 6)], flow=r(B, 2, 4, 4), warped=[r(B, 3, 4, 4)])
    null = FakeCond(features=[torch.zeros(B, 8, 4, 4), torch.zeros(B, 6)], flow=torch.zeros(B, 2, 4, 4),
                    warped=[torch.zeros(B, 3, 4, 4)])
    return x, t, pose, cond, null


def test_cfg_combine_identities():
    cond, uncond = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0, eps_channels=3), cond)
    zero = cfg_combine(cond, uncond, 0.0, eps_channels=3)
    assert torch.equal(zero[:, :3], uncond[:, :3]) and torch.equal(zero[:, 3:], cond[:, 3:])  # v from cond
    two = cfg_combine(cond, uncond, 2.0, eps_channels=3)
    torch.testing.assert_close(two[:, :3], 2 * cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(cfg_combine(cond, uncond, 2.0), 2 * cond - uncond)   # all channels are ε
    with pytest.raises(InputError, match="differ"):
        cfg_combine(cond, uncond[:, :3], 2.0)
    with pytest.raises(InputError, match="eps_channels"):
        cfg_combine(cond, uncond, 2.0, eps_channels=7)


def test_disentangled_combine_identities():
    null, pose, app = (torch.randn(2, 6, 4, 4) for _ in range(3))
    torch.testing.assert_close(cfg_combine_disentangled(null, pose, app, 1.0, 0.0, 3), pose)
    only_app = cfg_combine_disentangled(null, pose, app, 0.0, 1.0, 3)
    torch.testing.assert_close(only_app[:, :3], app[:, :3])
    assert torch.equal(only_app[:, 3:], pose[:, 3:])
    none = cfg_combine_disentangled(null, pose, app, 0.0, 0.0, 3)
    assert torch.equal(none[:, :3], null[:, :3])
    full = cfg_combine_disentangled(null, pose, app, 2.0, 1.5)
    torch.testing.assert_close(full, null + 2.0 * (pose - null) + 1.5 * (app - null))


def test_single_mode_runs_one_batched_forward_equal_to_separate_passes():
    x, t, pose, cond, null = make_inputs()
    model = FakeModel()
    out = make_eps_fn(model, pose, cond, null, w=2.0, batching="batched")(x, t)
    assert model.batches == [4]                               # cond + uncond in ONE forward of batch 2B
    expected = cfg_combine(model(x, t, pose, cond), model(x, t, pose, null), 2.0, eps_channels=3)
    torch.testing.assert_close(out, expected)
    assert out.shape == (2, 6, 4, 4)


def test_combine_variance_reproduces_pidm_all_channel_extrapolation():
    x, t, pose, cond, null = make_inputs()
    model = FakeModel()
    out = make_eps_fn(model, pose, cond, null, w=2.0, combine_variance=True)(x, t)
    c, u = model(x, t, pose, cond), model(x, t, pose, null)
    torch.testing.assert_close(out, u + (c - u) * 2.0)          # PIDM forward_with_cond_scale


def test_single_mode_with_w_one_skips_the_unconditional_pass():
    x, t, pose, cond, null = make_inputs()
    model = FakeModel()
    out = make_eps_fn(model, pose, cond, null, w=1.0)(x, t)
    assert model.batches == [2]
    assert torch.equal(out, model(x, t, pose, cond))


def test_disentangled_mode_uses_null_pose_and_one_forward():
    x, t, pose, cond, null = make_inputs()
    model = FakeModel()
    out = make_eps_fn(model, pose, cond, null, mode="disentangled", w_pose=2.0, w_app=1.5, batching="batched")(x, t)
    assert model.batches == [6]
    zero_pose = torch.zeros_like(pose)
    expected = cfg_combine_disentangled(model(x, t, zero_pose, null), model(x, t, pose, null),
                                        model(x, t, zero_pose, cond), 2.0, 1.5, eps_channels=3)
    torch.testing.assert_close(out, expected)
    custom_null_pose = torch.full_like(pose, -1.0)
    other = make_eps_fn(model, pose, cond, null, mode="disentangled", null_pose=custom_null_pose)(x, t)
    assert not torch.allclose(other, out)


def test_batch_one_conditions_are_shared_across_the_batch():
    x, t, pose, cond, null = make_inputs(B=2)
    single = FakeCond(features=[f[:1] for f in cond.features], flow=cond.flow[:1], warped=[w[:1] for w in cond.warped])
    single_null = FakeCond(features=[f[:1] for f in null.features], flow=null.flow[:1], warped=[w[:1] for w in null.warped])
    model = FakeModel()
    out = make_eps_fn(model, pose[:1], single, single_null)(x, t)
    ref = make_eps_fn(model, pose[:1].expand(2, -1, -1, -1), FakeCond([f[:1].expand(2, *f.shape[1:]) for f in cond.features],
                      cond.flow[:1].expand(2, -1, -1, -1), [w[:1].expand(2, -1, -1, -1) for w in cond.warped]),
                      FakeCond([f[:1].expand(2, *f.shape[1:]) for f in null.features], null.flow[:1].expand(2, -1, -1, -1),
                      [w[:1].expand(2, -1, -1, -1) for w in null.warped]))(x, t)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("mode", ["single", "disentangled"])
def test_batched_and_sequential_passes_give_the_same_output(mode):
    x, t, pose, cond, null = make_inputs()
    outs, models = {}, {}
    for batching in ("batched", "sequential"):
        models[batching] = FakeModel()
        outs[batching] = make_eps_fn(models[batching], pose, cond, null, w=2.0, mode=mode, batching=batching)(x, t)
    n = 2 if mode == "single" else 3
    assert models["batched"].batches == [2 * n]
    assert models["sequential"].batches == [2] * n
    torch.testing.assert_close(outs["batched"], outs["sequential"], atol=0, rtol=0)


def test_conditions_are_concatenated_once_per_pair_not_per_step():
    x, t, pose, cond, null = make_inputs()
    seen = []

    def model(x_t, t_, pose_map, c):
        seen.append((pose_map, c.features[0]))
        return FakeModel()(x_t, t_, pose_map, c)

    for batching in ("batched", "sequential"):
        seen.clear()
        eps_fn = make_eps_fn(model, pose, cond, null, w=2.0, batching=batching)
        for step in range(3):
            eps_fn(x + step, t)
        per_step = len(seen) // 3
        for i in range(per_step):  # the very same tensors reach the model at every step
            assert all(seen[i][0] is seen[i + k * per_step][0] and seen[i][1] is seen[i + k * per_step][1]
                       for k in range(3))


def test_auto_batching_measures_both_then_keeps_the_faster(monkeypatch):
    import repose_core.diffusion.classifier_free as G
    monkeypatch.setattr(G, "_AUTO_CHOICE", {})
    clock = [0.0]  # a fake clock: the test does not depend on this machine's timing
    monkeypatch.setattr(G, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    x, t, pose, cond, null = make_inputs()

    class SlowBatches(FakeModel):  # a batch of 2B "takes" 1 s, a batch of B 0.1 s
        def __call__(self, x_t, t_, pose_map, c):
            clock[0] += 1.0 if x_t.shape[0] > 2 else 0.1
            return super().__call__(x_t, t_, pose_map, c)

    model = SlowBatches()
    eps_fn = make_eps_fn(model, pose, cond, null, w=2.0)  # batching="auto" is the default
    ref = make_eps_fn(FakeModel(), pose, cond, null, w=2.0, batching="batched")
    for _ in range(6):
        torch.testing.assert_close(eps_fn(x, t), ref(x, t), atol=0, rtol=0)
    # trials: batched, sequential, batched, sequential; then sequential only
    assert model.batches == [4, 2, 2, 4, 2, 2] + [2, 2] * 2
    assert list(G._AUTO_CHOICE.values()) == ["sequential"]
    model2 = SlowBatches()
    make_eps_fn(model2, pose, cond, null, w=2.0)(x, t)  # the choice is remembered for this model type and shape
    assert model2.batches == [2, 2]


def test_cfg_input_errors():
    x, t, pose, cond, null = make_inputs()
    with pytest.raises(InputError, match="batching"):
        make_eps_fn(FakeModel(), pose, cond, null, batching="parallel")
    with pytest.raises(InputError, match="mode"):
        make_eps_fn(FakeModel(), pose, cond, null, mode="triple")
    bad_batch = FakeCond(features=[torch.zeros(3, 8, 4, 4), torch.zeros(3, 6)], flow=torch.zeros(3, 2, 4, 4), warped=[])
    with pytest.raises(InputError, match="batch size 3"):
        make_eps_fn(FakeModel(), pose, cond, bad_batch)(x, t)
    no_flow = FakeCond(features=null.features, flow=None, warped=null.warped)
    with pytest.raises(InputError, match="None"):
        make_eps_fn(FakeModel(), pose, cond, no_flow)(x, t)
    with pytest.raises(InputError, match="pose_map"):
        make_eps_fn(FakeModel(), torch.zeros(3, 5, 4, 4), cond, null)(x, t)


def test_drop_condition():
    g = torch.Generator().manual_seed(0)
    mask = drop_condition(20000, p=0.1, generator=g)
    assert mask.dtype == torch.bool and mask.shape == (20000,)
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(drop_condition(64, 0.3, torch.Generator().manual_seed(4)),
                       drop_condition(64, 0.3, torch.Generator().manual_seed(4)))
    assert not drop_condition(100, 0.0).any() and drop_condition(100, 1.0).all()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        drop_condition(4, 1.5)
