"""Recurrent Pose Alignment (paper 3.2): flow utilities, MapFormer regions, correlation volume, learnability."""

import pytest
import torch
import torch.nn.functional as F

from repose_core.errors import InputError
from repose_core.models.rpa import (
    RecurrentPoseAlignment,
    RegionAttention,
    RPAConfig,
    neighbourhood_attention,
    compose_flows,
    correlation_volume,
    region_attention_mask,
    resize_flow,
    rpa_warp_loss,
    upsample_flow,
    warp,
)


def const_flow(dx, dy, b=1, h=12, w=10):
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def scale_flow(s, h=12, w=10, cy=5.5, cx=4.5):
    """flow(x) = (s - 1)(x - c): warp(img, flow)(x) = img(c + s(x - c)), a zoom about c."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([(s - 1) * (xs - cx), (s - 1) * (ys - cy)])[None]


# ---------------------------------------------------------------------------------------------------------------
# warp / compose / resize


def test_warp_integer_shift_moves_pixels():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 12, 10, generator=g)
    out = warp(img, const_flow(2, -1, b=2))  # out(x, y) = img(x + 2, y - 1)
    assert torch.allclose(out[..., 1:, :-2], img[..., :-1, 2:], atol=1e-5)
    assert out[..., 0, :].abs().max() == 0 and out[..., :, -2:].abs().max() == 0  # sampled outside: zeros
    border = warp(img, const_flow(2, -1, b=2), padding_mode="border")
    assert torch.allclose(border[..., 0, :-2], img[..., 0, 2:], atol=1e-5)


def test_warp_with_zero_flow_is_identity():
    img = torch.randn(1, 4, 7, 9)
    assert torch.allclose(warp(img, torch.zeros(1, 2, 7, 9)), img, atol=1e-6)


def test_warp_rejects_mismatched_flow():
    with pytest.raises(InputError, match="flow"):
        warp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize("a,b", [((2.0, -1.0), (0.5, 3.0)), ((-3.0, 0.0), (3.0, 0.0))])
def test_composing_translations_adds_them(a, b):
    fa, fb = const_flow(*a), const_flow(*b)
    composed = compose_flows(fa, fb)
    assert torch.allclose(composed, const_flow(a[0] + b[0], a[1] + b[1]), atol=1e-5)


def test_composing_scalings_multiplies_them():
    composed = compose_flows(scale_flow(1.2), scale_flow(0.9))
    # interior only: the border of an out-of-range sample is clamped
    assert torch.allclose(composed[..., 2:-2, 2:-2], scale_flow(1.2 * 0.9)[..., 2:-2, 2:-2], atol=1e-4)


def test_composition_matches_sequential_warping():
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 20), indexing="ij")
    img = torch.stack([xs * 3 + ys, xs * ys * 2, xs - ys])[None]  # smooth, so bilinear resampling is near exact
    f, d = const_flow(1.5, -0.5, h=24, w=20), scale_flow(1.1, h=24, w=20, cy=11.5, cx=9.5)
    twice = warp(warp(img, f), d)
    once = warp(img, compose_flows(f, d))
    assert torch.allclose(twice[..., 4:-4, 4:-4], once[..., 4:-4, 4:-4], atol=1e-4)


def test_upsample_flow_scales_values_and_keeps_translations():
    up = upsample_flow(const_flow(1.0, -2.0, h=4, w=3), 4)
    assert up.shape == (1, 2, 16, 12)
    assert torch.allclose(up, const_flow(4.0, -8.0, h=16, w=12))
    # a scaling flow stays a scaling (about the corresponding centre) after upsampling
    up = upsample_flow(scale_flow(1.5, h=6, w=4, cy=2.5, cx=1.5), 2)
    assert torch.allclose(up[..., 2:-2, 2:-2], scale_flow(1.5, h=12, w=8, cy=5.5, cx=3.5)[..., 2:-2, 2:-2], atol=1e-5)
    anis = resize_flow(const_flow(1.0, 1.0, h=4, w=4), (8, 12))
    assert torch.allclose(anis[:, 0], torch.full((1, 8, 12), 3.0))  # x scaled by the width ratio 12/4
    assert torch.allclose(anis[:, 1], torch.full((1, 8, 12), 2.0))  # y scaled by the height ratio 8/4


# ---------------------------------------------------------------------------------------------------------------
# MapFormer regions and the correlation volume


def test_region_mask_restricts_heads_to_chebyshev_regions():
    mask = region_attention_mask(5, 6, radii=(0, 2, 1), heads_per_region=2)
    assert mask.shape == (6, 30, 30) and mask.dtype == torch.bool
    assert mask[0].all() and mask[1].all()  # global heads
    q = 2 * 6 + 3  # token (y=2, x=3)
    local = mask[4, q].view(5, 6)
    assert local.sum() == 9 and local[1:4, 2:5].all()
    assert mask[2, q].view(5, 6).sum() == 5 * 5  # radius 2: rows 0-4, columns 1-5
    assert region_attention_mask(4, 4, radii=(0,), heads_per_region=3) is None


def masked_reference(q, k, v, radius):
    """The plain definition: full attention over the (H·W) tokens with the Chebyshev-region mask."""
    B, h, H, W, d = q.shape
    mask = region_attention_mask(H, W, (radius,), h)
    return F.scaled_dot_product_attention(*(t.flatten(2, 3) for t in (q, k, v)), attn_mask=mask).view(B, h, H, W, d)


@pytest.mark.parametrize("size,radius", [((5, 6), 2), ((4, 11), 3), ((16, 22), 8), ((7, 22), 1), ((3, 3), 4),
                                         ((1, 9), 2), ((6, 1), 1)])
def test_neighbourhood_attention_equals_masked_attention_with_gradients(size, radius):
    """Borders (fewer keys), radius beyond the map, 1-pixel maps, and the 22-column grid of padded latents."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, *size, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, ref = neighbourhood_attention(q, k, v, radius), masked_reference(q, k, v, radius)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_neighbourhood_attention_gradcheck_and_partial_grads():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: neighbourhood_attention(q, k, v, 2), (q, k, v))
    k2 = k.detach()  # only some inputs need gradients
    gq, gv = torch.autograd.grad(neighbourhood_attention(q, k2, v, 1).sum(), (q, v))
    rq, rv = torch.autograd.grad(masked_reference(q, k2, v, 1).sum(), (q, v))
    torch.testing.assert_close(gq, rq), torch.testing.assert_close(gv, rv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neighbourhood_attention_low_precision(dtype):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 8, 11, 16, generator=g).to(dtype) for _ in range(3))
    ref = masked_reference(*(t.double() for t in (q, k, v)), 3)
    out = neighbourhood_attention(q, k, v, 3)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    with pytest.raises(InputError, match="radius"):
        neighbourhood_attention(q, k, v, 0)


@pytest.mark.parametrize("head_radii", [(0, 0, 2, 1), (2, 0, 1, 0), (2, 1), (0, 0), (1, 3, 1, 0)])
@pytest.mark.parametrize("impl", ["auto", "neighbourhood", "masked"])
def test_region_attention_equals_one_masked_attention_over_all_heads(head_radii, impl):
    """Both implementations (global heads through SDPA, restricted heads grouped by radius and put back in head
    order) == a single masked call over all heads (the plain definition)."""
    torch.manual_seed(0)
    attn = RegionAttention(16, head_radii)
    attn.impl = impl
    x, ctx = torch.randn(2, 20, 16), torch.randn(2, 20, 16)
    full = region_attention_mask(4, 5, head_radii, 1)
    q = attn.to_q(x).view(2, 20, len(head_radii), -1).transpose(1, 2)
    k, v = (t.view(2, 20, len(head_radii), -1).transpose(1, 2) for t in attn.to_kv(ctx).chunk(2, dim=-1))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 20, 16))
    torch.testing.assert_close(attn(x, ctx, (4, 5)), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size,radius", [((9, 9), 2), ((16, 22), 4), ((5, 3), 3), ((1, 7), 1), ((7, 11), 0)])
def test_correlation_volume_equals_the_unfold_definition_with_gradients(size, radius):
    """Row-at-a-time correlation (own backward, no D·(2R+1)²·L windows kept) == the plain unfold formula."""
    g = torch.Generator().manual_seed(0)
    tgt, src = (torch.randn(2, 6, *size, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    k = 2 * radius + 1
    windows = F.unfold(src, kernel_size=k, padding=radius).view(2, 6, k * k, *size)
    ref = F.relu(torch.einsum("bdhw,bdkhw->bkhw", tgt, windows) / 6 ** 0.5)
    out = correlation_volume(tgt, src, radius)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (tgt, src), grad), torch.autograd.grad(ref, (tgt, src), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    small = [t.detach()[:1, :3, :4, :5].clone().requires_grad_() for t in (tgt, src)]
    assert torch.autograd.gradcheck(lambda a, b: correlation_volume(a, b, 1), small)


def test_correlation_volume_channels_and_peak_at_the_shift():
    R = 2
    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 16, 9, 9, generator=g)
    tgt = torch.roll(src, shifts=(-1, 2), dims=(2, 3))  # tgt(x) = src(x + (dx=-2, dy=1))
    corr = correlation_volume(tgt, src, R)
    assert corr.shape == (1, (2 * R + 1) ** 2, 9, 9)
    assert (corr >= 0).all()  # ReLU
    k = corr[0, :, 4, 4].argmax().item()  # channel k = (dy + R)(2R+1) + (dx + R)
    dy, dx = k // (2 * R + 1) - R, k % (2 * R + 1) - R
    assert (dx, dy) == (-2, 1)


# ---------------------------------------------------------------------------------------------------------------
# The RPA module


def tiny_cfg(**kw):
    base = dict(source_channels=3, pose_channels=5, downsample=2, depth=16, region_radii=(0, 2), heads_per_region=1,
                corr_radius=2, iterations=3)
    base.update(kw)
    return RPAConfig(**base)


@pytest.mark.parametrize("warp_space", ["image", "feature"])
def test_rpa_shapes_identity_init_and_determinism(warp_space):
    torch.manual_seed(0)
    rpa = RecurrentPoseAlignment(tiny_cfg(warp_space=warp_space)).eval()
    src, pose = torch.randn(2, 3, 14, 11), torch.rand(2, 5, 14, 11)  # 11 is odd: padded inside, cropped back
    calls = []
    out = rpa(src, pose, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert out.flow.shape == (2, 2, 14, 11) and len(out.flows) == len(out.warped) == 3
    assert all(w.shape == src.shape for w in out.warped)
    # the last aggregator conv is zero-initialised: an untrained RPA is the identity
    assert out.flow.abs().max() == 0 and torch.allclose(out.warped[-1], src, atol=1e-5)
    # perturb the head so the flow is not trivial, then check determinism
    with torch.no_grad():
        rpa.aggregator.conv2.weight.normal_(0, 0.05)
    a, b = rpa(src, pose), rpa(src, pose)
    assert a.flow.abs().max() > 0
    assert torch.equal(a.flow, b.flow) and all(torch.equal(x, y) for x, y in zip(a.warped, b.warped))
    assert len(rpa(src, pose, iterations=1).flows) == 1


@pytest.mark.parametrize("size,radii,heads", [((32, 44), (0, 4, 1), 1), ((20, 27), (0, 8, 3), 2), ((14, 11), (2,), 2)])
def test_rpa_neighbourhood_heads_equal_the_masked_reference(size, radii, heads):
    """Whole RPA (MapFormer inside the recurrence) with gradients: the neighbourhood implementation and the L×L
    masked reference give the same flows and parameter gradients. (32, 44) is a 16×22 RPA grid (512×352 latents);
    odd sizes are padded to the downsampling inside."""
    torch.manual_seed(0)
    rpa = RecurrentPoseAlignment(tiny_cfg(depth=12 * heads, region_radii=radii, heads_per_region=heads,
                                          iterations=2)).double()
    with torch.no_grad():
        rpa.aggregator.conv2.weight.normal_(0, 0.05)  # non-trivial flows, so the recurrence depends on attention
    src, pose = torch.randn(2, 3, *size, dtype=torch.float64), torch.rand(2, 5, *size, dtype=torch.float64)
    results = []
    for impl, checkpointing in (("neighbourhood", True), ("masked", True), ("neighbourhood", False)):
        rpa.set_attention_impl(impl)
        rpa.checkpointing = checkpointing  # activation checkpoints: same values, recomputed in the backward pass
        rpa.zero_grad()
        out = rpa(src, pose)
        rpa_warp_loss(out, pose[:, :3]).backward()
        results.append((out.flow.detach(), {n: p.grad.clone() for n, p in rpa.named_parameters()}))
    (flow_a, grads_a), (flow_b, grads_b), (flow_c, grads_c) = results
    assert flow_a.abs().max() > 0
    torch.testing.assert_close(flow_a, flow_b, atol=1e-9, rtol=1e-9)
    assert torch.equal(flow_a, flow_c)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-9, rtol=1e-7, msg=name)
        torch.testing.assert_close(grads_a[name], grads_c[name], atol=1e-12, rtol=1e-12, msg=name)
    with pytest.raises(InputError, match="impl"):
        rpa.set_attention_impl("dense")


def test_rpa_parameter_layout_is_unchanged():
    """Shipped and in-training checkpoints load with strict=True: the attention implementation adds no parameters
    or buffers. Keys and shapes of the MapFormer as they were with the masked implementation."""
    rpa = RecurrentPoseAlignment(tiny_cfg(depth=16, region_radii=(0, 2), heads_per_region=1))
    shapes = {k: tuple(v.shape) for k, v in rpa.state_dict().items() if k.startswith("mapformer.self_attn.")}
    assert shapes == {
        "mapformer.self_attn.attn.to_q.weight": (16, 16), "mapformer.self_attn.attn.to_q.bias": (16,),
        "mapformer.self_attn.attn.to_kv.weight": (32, 16), "mapformer.self_attn.attn.to_kv.bias": (32,),
        "mapformer.self_attn.attn.proj.weight": (16, 16), "mapformer.self_attn.attn.proj.bias": (16,),
        "mapformer.self_attn.norm1.weight": (16,), "mapformer.self_attn.norm1.bias": (16,),
        "mapformer.self_attn.ffn.0.weight": (32, 16), "mapformer.self_attn.ffn.0.bias": (32,),
        "mapformer.self_attn.ffn.2.weight": (16, 32), "mapformer.self_attn.ffn.2.bias": (16,),
        "mapformer.self_attn.norm2.weight": (16,), "mapformer.self_attn.norm2.bias": (16,),
    }
    assert len(rpa.state_dict()) == 52
    before = set(rpa.state_dict())
    rpa.set_attention_impl("masked")
    rpa(torch.zeros(1, 3, 8, 8), torch.zeros(1, 5, 8, 8))
    assert set(rpa.state_dict()) == before


def test_rpa_bad_inputs_are_named():
    rpa = RecurrentPoseAlignment(tiny_cfg())
    with pytest.raises(InputError, match="source"):
        rpa(torch.zeros(1, 4, 8, 8), torch.zeros(1, 5, 8, 8))
    with pytest.raises(InputError, match="pose_map"):
        rpa(torch.zeros(1, 3, 8, 8), torch.zeros(1, 20, 8, 8))
    with pytest.raises(InputError, match="same batch size and spatial size"):
        rpa(torch.zeros(1, 3, 8, 8), torch.zeros(1, 5, 8, 6))
    with pytest.raises(InputError, match="iterations"):
        rpa(torch.zeros(1, 3, 8, 8), torch.zeros(1, 5, 8, 8), iterations=0)


@pytest.mark.parametrize("kw,field", [(dict(downsample=3), "downsample"), (dict(depth=9), "depth"),
                                      (dict(warp_space="latent"), "warp_space"),
                                      (dict(region_radii=()), "region_radii"),
                                      (dict(corr_radius=-1), "corr_radius"), (dict(iterations=0), "iterations")])
def test_rpa_config_validation(kw, field):
    with pytest.raises(InputError, match=field):
        tiny_cfg(**kw)


def test_rpa_warp_loss_weights_iterations():
    target = torch.zeros(1, 3, 4, 4)
    out = RecurrentPoseAlignment(tiny_cfg(iterations=2))(torch.ones(1, 3, 4, 4), torch.zeros(1, 5, 4, 4))
    out.warped = [torch.full_like(target, 1.0), torch.full_like(target, 2.0)]
    assert rpa_warp_loss(out, target, gamma=0.5).item() == pytest.approx((0.5 * 1 + 1 * 2) / 1.5)
    with pytest.raises(InputError, match="target shape"):
        rpa_warp_loss(out, torch.zeros(1, 3, 5, 5))


def textured_pairs(batch, size, max_shift, gen):
    """Smooth random textures and copies shifted by a random integer displacement d: target(x) = source(x - d)."""
    margin = max_shift + 1
    tex = F.interpolate(torch.randn(batch, 3, (size + 2 * margin) // 3, (size + 2 * margin) // 3, generator=gen),
                        size=(size + 2 * margin,) * 2, mode="bilinear", align_corners=False)
    d = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=gen)  # (dx, dy)
    tgt = torch.stack([torch.roll(t, shifts=(int(dy), int(dx)), dims=(1, 2)) for t, (dx, dy) in zip(tex, d)])
    crop = (..., slice(margin, -margin), slice(margin, -margin))
    return tex[crop], tgt[crop], d.float()


def test_rpa_learns_to_recover_a_known_displacement():
    """A tiny RPA trained briefly with rpa_warp_loss on shifted textures predicts flow ≈ -d (warp(src, -d) = target).
    The "pose map" here is the target texture itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a shared CI machine
    try:
        _train_and_check_displacement()
    finally:
        torch.set_num_threads(threads)


def _train_and_check_displacement():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    cfg = RPAConfig(source_channels=3, pose_channels=3, downsample=2, depth=16, region_radii=(0, 2), corr_radius=2,
                    iterations=2)
    rpa = RecurrentPoseAlignment(cfg)
    opt = torch.optim.Adam(rpa.parameters(), lr=3e-3)
    for _ in range(150):   # the budget is this fixed step count, not a clock: the test measures behaviour only
        src, tgt, _ = textured_pairs(8, 24, 3, gen)
        loss = rpa_warp_loss(rpa(src, tgt), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    src, tgt, d = textured_pairs(32, 24, 3, gen)  # fresh pairs
    with torch.no_grad():
        flow = rpa(src, tgt).flow[..., 4:-4, 4:-4].mean(dim=(2, 3))  # (B, 2), away from the borders
    err = (flow + d).norm(dim=1).mean().item()
    shift = d.norm(dim=1).mean().item()
    assert err < 0.35 * shift, f"mean flow error {err:.2f} px vs mean shift {shift:.2f} px"
