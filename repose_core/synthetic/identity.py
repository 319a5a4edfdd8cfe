"""Who a synthetic person is: body proportions, skin, hair, garments with their textures, and the backdrop.

An Identity is everything that must stay fixed between the source and the target image of a pose-transfer pair.
All lengths are in *body units* (bu): a standing figure is about 1 bu from the top of the head to the ankles.
The renderer converts bu to pixels with the scale it reads off the pose (torso length), so an Identity can be
drawn at any image size and in any pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Colour = tuple  # (r, g, b) floats in [0, 1]

PATTERNS = ("solid", "stripes", "checks", "dots", "gradient")
SLEEVES = ("none", "short", "long")
BOTTOMS = ("pants", "shorts", "skirt", "dress")
HAIR_STYLES = ("short", "long", "bun", "bald")
BACKGROUNDS = ("plain", "gradient", "stripes", "checks", "blotches")


@dataclass(frozen=True)
class Texture:
    """A two-colour procedural pattern evaluated in a body part's local frame (bu), see textures.eval_texture.

    period: pattern period in bu; angle: pattern rotation (radians) relative to the part's axis;
    phase: (du, dv) offset in bu so two identities with the same pattern still differ."""

    pattern: str
    color_a: Colour
    color_b: Colour
    period: float
    angle: float
    phase: tuple


@dataclass(frozen=True)
class Proportions:
    """Bone lengths and part radii in bu. Names follow the OpenPose-18 joints they connect."""

    torso: float          # neck -> mid-hip
    shoulder_half: float  # neck -> shoulder, horizontally
    hip_half: float       # mid-hip -> hip joint
    neck: float           # neck keypoint -> bottom of the head
    head: float           # head radius (vertical semi-axis)
    upper_arm: float
    lower_arm: float
    upper_leg: float
    lower_leg: float
    foot: float
    arm_r: float          # upper-arm radius at the shoulder
    forearm_r: float      # forearm radius at the wrist
    thigh_r: float        # thigh radius at the hip
    calf_r: float         # calf radius at the ankle
    hand_r: float
    waist: float          # torso side inset at the waist, fraction of the torso width (0 = straight sides)


@dataclass(frozen=True)
class Background:
    """Backdrop in image coordinates (it does not move with the person; same for all poses of an identity)."""

    kind: str
    color_a: Colour
    color_b: Colour
    period: float         # fraction of the image height (stripes/checks/blotches)
    angle: float
    seed: int             # blotches: seed of the low-frequency noise


@dataclass(frozen=True)
class Identity:
    """One synthetic person: body, skin/hair, garments, background."""

    body: Proportions
    skin: Colour
    hair: Colour
    hair_style: str
    top: Texture          # shirt (torso + sleeves); for a dress also the skirt
    sleeves: str          # "none" | "short" | "long"
    top_length: float     # fraction of the torso (neck -> hips) the top covers; the rest is the bottom garment
    bottom: Texture       # pants / shorts / skirt (== top for a dress)
    bottom_kind: str      # "pants" | "shorts" | "skirt" | "dress"
    skirt_length: float   # skirt hem, in upper-leg lengths below the hips (may reach below the knee)
    skirt_flare: float    # outward spread of the hem, in bu
    legwear: Colour       # bare legs under a skirt/shorts show this (skin or tights)
    shoes: Colour
    background: Background


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _hsv_to_rgb(h: float, s: float, v: float) -> Colour:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(float(round(c, 4)) for c in rgb)


def _garment_colour(rng: np.random.Generator) -> Colour:
    """Saturated, muted, dark or light garment colours in roughly DeepFashion-like proportions."""
    kind = rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])
    h = rng.random()
    if kind == 0:   # saturated
        return _hsv_to_rgb(h, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    if kind == 1:   # muted
        return _hsv_to_rgb(h, rng.uniform(0.15, 0.5), rng.uniform(0.35, 0.85))
    if kind == 2:   # dark
        return _hsv_to_rgb(h, rng.uniform(0.0, 0.6), rng.uniform(0.08, 0.3))
    return _hsv_to_rgb(h, rng.uniform(0.0, 0.2), rng.uniform(0.85, 0.98))  # light / white


def _contrasting(rng: np.random.Generator, base: Colour) -> Colour:
    """A second pattern colour that differs visibly from `base` (luma difference >= 0.25)."""
    for _ in range(20):
        c = _garment_colour(rng)
        if abs(_luma(c) - _luma(base)) >= 0.25:
            return c
    return (0.95, 0.95, 0.95) if _luma(base) < 0.5 else (0.1, 0.1, 0.1)


def _luma(c: Colour) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def sample_texture(rng: np.random.Generator, patterns=PATTERNS, weights=(0.2, 0.3, 0.17, 0.15, 0.18)) -> Texture:
    pattern = str(rng.choice(patterns, p=np.asarray(weights) / np.sum(weights)))
    a = _garment_colour(rng)
    b = _contrasting(rng, a)
    angle = float(rng.choice([0.0, 0.0, np.pi / 2, np.pi / 4, -np.pi / 4]))
    return Texture(pattern=pattern, color_a=a, color_b=b, period=float(rng.uniform(0.045, 0.11)), angle=angle,
                   phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))))


def sample_proportions(rng: np.random.Generator) -> Proportions:
    """Proportions vary per identity: overall build (radii), leg/torso ratio, shoulder/hip widths."""
    build = rng.uniform(0.85, 1.2)        # slim .. broad
    legs = rng.uniform(0.93, 1.08)        # relative leg length
    arms = rng.uniform(0.94, 1.06)
    female_like = rng.random() < 0.5      # wider hips / narrower shoulders / waist
    u = rng.uniform
    return Proportions(
        torso=u(0.28, 0.31),
        shoulder_half=u(0.085, 0.097) if female_like else u(0.097, 0.112),
        hip_half=u(0.056, 0.066) if female_like else u(0.05, 0.06),
        neck=u(0.025, 0.04),
        head=u(0.062, 0.07),
        upper_arm=0.17 * arms * u(0.97, 1.03),
        lower_arm=0.15 * arms * u(0.97, 1.03),
        upper_leg=0.235 * legs * u(0.97, 1.03),
        lower_leg=0.225 * legs * u(0.97, 1.03),
        foot=u(0.05, 0.06),
        arm_r=0.028 * build,
        forearm_r=0.019 * build,
        thigh_r=(0.047 if female_like else 0.043) * build,
        calf_r=0.025 * build,
        hand_r=u(0.02, 0.024),
        waist=u(0.06, 0.14) if female_like else u(0.0, 0.05),
    )


_SKIN_TONES = ((0.98, 0.84, 0.72), (0.93, 0.76, 0.62), (0.85, 0.65, 0.5), (0.72, 0.52, 0.38),
               (0.55, 0.38, 0.26), (0.4, 0.27, 0.19))
_HAIR = ((0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.45, 0.3, 0.15), (0.75, 0.6, 0.35), (0.6, 0.25, 0.1),
         (0.55, 0.55, 0.55))


def _jitter(rng: np.random.Generator, c: Colour, amount: float) -> Colour:
    return tuple(float(round(min(1.0, max(0.0, v + rng.uniform(-amount, amount))), 4)) for v in c)


def sample_background(rng: np.random.Generator) -> Background:
    """Mostly plain light studio backdrops (like DeepFashion), sometimes textured so models cannot rely on white."""
    kind = str(rng.choice(BACKGROUNDS, p=[0.45, 0.2, 0.1, 0.1, 0.15]))
    light = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.82, 0.99))
    other = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.55, 0.95))
    return Background(kind=kind, color_a=light, color_b=other, period=float(rng.uniform(0.08, 0.25)),
                      angle=float(rng.uniform(-0.6, 0.6)), seed=int(rng.integers(0, 2**31 - 1)))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a person: proportions, skin/hair, a top and a bottom garment (or a dress), shoes and a backdrop."""
    body = sample_proportions(rng)
    skin = _jitter(rng, _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], 0.03)
    hair = _jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 0.03)
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.4, 0.35, 0.15, 0.1]))
    bottom_kind = str(rng.choice(BOTTOMS, p=[0.35, 0.15, 0.25, 0.25]))
    top = sample_texture(rng)
    if bottom_kind == "dress":
        bottom = top
        top_length = 1.0
    else:
        # bottoms are more often plain/dark (jeans, trousers)
        bottom = sample_texture(rng, weights=(0.5, 0.15, 0.15, 0.1, 0.1))
        top_length = float(rng.uniform(0.82, 0.98))
    sleeves = str(rng.choice(SLEEVES, p=[0.2, 0.45, 0.35]))
    legwear = skin if rng.random() < 0.75 else _hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.1, 0.4))
    return Identity(
        body=body, skin=skin, hair=hair, hair_style=hair_style, top=top, sleeves=sleeves, top_length=top_length,
        bottom=bottom, bottom_kind=bottom_kind,
        skirt_length=float(rng.uniform(0.55, 1.45)), skirt_flare=float(rng.uniform(0.01, 0.06)),
        legwear=legwear, shoes=_hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.6)),
        background=sample_background(rng),
    )
