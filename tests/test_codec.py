"""Codecs: images <-> diffusion space (DESIGN.md "Codec")."""
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from repose_core.errors import InputError, MissingDependencyError
from repose_core.models.codec import (
    DiffusersVAECodec,
    IdentityCodec,
    PixelUnshuffleCodec,
    codec_from_name,
    codec_spec,
)


def image(b=2, h=16, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_identity_codec_is_pixel_space():
    codec = IdentityCodec()
    x = image()
    assert (codec.channels, codec.factor) == (3, 1)
    assert torch.equal(codec.encode(x), x)
    assert torch.equal(codec.decode(x), x)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_pixel_unshuffle_is_exactly_invertible(factor):
    codec = PixelUnshuffleCodec(factor)
    x = image(h=16, w=12)
    z = codec.encode(x)
    assert z.shape == (2, 3 * factor**2, 16 // factor, 12 // factor)
    assert codec.channels == 3 * factor**2 and codec.factor == factor
    assert torch.equal(codec.decode(z), x)  # bit-exact


def test_pixel_unshuffle_keeps_each_block_in_one_position():
    codec = PixelUnshuffleCodec(2)
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 2, 3] = 1.0  # green pixel in block (1, 1)
    z = codec.encode(x)
    assert z.abs().sum() == 1 and z[0, :, 1, 1].abs().sum() == 1


def test_decode_is_differentiable():
    codec = PixelUnshuffleCodec(2)
    z = codec.encode(image()).requires_grad_(True)
    codec.decode(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(15, 12), (16, 10)])
def test_size_not_divisible_by_factor_names_size_and_factor(size):
    codec = PixelUnshuffleCodec(4)
    with pytest.raises(InputError) as err:
        codec.encode(image(h=size[0], w=size[1]))
    msg = str(err.value)
    assert f"{size[0]}x{size[1]}" in msg and "4" in msg


def test_wrong_channel_counts_are_rejected():
    codec = PixelUnshuffleCodec(2)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        codec.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="12"):
        codec.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(InputError):
        PixelUnshuffleCodec(0)


def test_codec_from_name():
    assert isinstance(codec_from_name("pixel"), IdentityCodec)
    c2, c4 = codec_from_name("unshuffle2"), codec_from_name("unshuffle4")
    assert (c2.channels, c2.factor, c4.channels, c4.factor) == (12, 2, 48, 4)
    assert codec_spec("sd_vae") == (4, 8)
    with pytest.raises(InputError, match="pixel"):
        codec_from_name("jpeg")
    with pytest.raises(InputError, match="vae="):
        codec_from_name("sd_vae")


class FakeAutoencoderKL(nn.Module):
    """Duck-typed diffusers AutoencoderKL: 2× downsampling, 4 latent channels, posterior mean + std."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(latent_channels=4, block_out_channels=(8, 8))
        self.enc = nn.Conv2d(3, 8, 2, stride=2)  # mean (4) and logvar (4)
        self.dec = nn.ConvTranspose2d(4, 3, 2, stride=2)

    def encode(self, x):
        mean, logvar = self.enc(x).chunk(2, dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, sample=lambda: mean + logvar.exp() * 7))

    def decode(self, z):
        return SimpleNamespace(sample=self.dec(z))


def test_diffusers_vae_codec_uses_posterior_mean_and_scaling():
    vae = FakeAutoencoderKL()
    codec = DiffusersVAECodec(vae, scaling_factor=0.5)
    x = image(h=8, w=8)
    z = codec.encode(x)
    assert (codec.channels, codec.factor) == (4, 2) and z.shape == (2, 4, 4, 4)
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * 0.5
        assert torch.allclose(z, expected)
        assert torch.allclose(codec.decode(z), vae.decode(z / 0.5).sample)
    assert not any(p.requires_grad for p in vae.parameters())  # frozen ...
    zg = z.detach().requires_grad_(True)
    codec.decode(zg).sum().backward()  # ... but differentiable w.r.t. the latent (pose guidance)
    assert zg.grad.abs().sum() > 0
    assert codec_from_name("sd_vae", vae=vae).channels == 4


def test_diffusers_vae_codec_rejects_other_objects():
    with pytest.raises(InputError, match="AutoencoderKL"):
        DiffusersVAECodec(nn.Linear(2, 2))


def test_missing_diffusers_raises_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(MissingDependencyError, match="diffusers"):
        DiffusersVAECodec.from_pretrained("stabilityai/stable-diffusion-2-1")
