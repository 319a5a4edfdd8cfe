"""Procedural two-colour patterns and backdrops, evaluated per pixel with numpy.

Garment patterns are functions of a body part's *local* coordinates (u along the bone, v across it, both in body
units), so the pattern is carried by the part: the same garment in another pose shows the same pattern, moved and
deformed with the limb. Backdrops are functions of image coordinates.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .identity import BACKGROUNDS, PATTERNS, Background, Texture


def pattern_weight(tex: Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] of colour b over colour a at local coordinates (u, v) in bu (any equal shapes)."""
    p = tex.period
    c, s = np.cos(tex.angle), np.sin(tex.angle)
    a = (u * c + v * s) / p + tex.phase[0]   # pattern coordinates, in periods
    b = (v * c - u * s) / p + tex.phase[1]
    if tex.pattern == "solid":
        return np.zeros_like(u)
    if tex.pattern == "stripes":
        return (a - np.floor(a) < 0.45).astype(u.dtype)
    if tex.pattern == "checks":
        return ((np.floor(a) + np.floor(b)) % 2).astype(u.dtype)
    if tex.pattern == "dots":
        row = np.floor(b)
        fa = a + 0.5 * (row % 2)                  # staggered rows
        da, db = fa - np.floor(fa) - 0.5, b - row - 0.5
        return (da * da + db * db < 0.3 ** 2).astype(u.dtype)
    if tex.pattern == "gradient":
        # a slow smooth wave: light-to-dark across a garment, continuous along each part
        return (0.5 + 0.5 * np.sin(a * (2 * np.pi / 6.0))).astype(u.dtype)
    raise InputError(f"unknown texture pattern {tex.pattern!r}; accepted: {', '.join(PATTERNS)}")


def eval_texture(tex: Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colour (..., 3) float32 of the texture at local coordinates (u, v) in bu."""
    w = pattern_weight(tex, u, v)[..., None]
    a = np.asarray(tex.color_a, np.float32)
    b = np.asarray(tex.color_b, np.float32)
    return (a + (b - a) * w).astype(np.float32)


def _smooth_noise(seed: int, H: int, W: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1], shape (H, W); resolution independent (cells across the height)."""
    rng = np.random.default_rng(seed)
    ch, cw = cells + 2, int(np.ceil(cells * W / H)) + 2
    grid = rng.random((ch, cw)).astype(np.float32)
    y = (np.arange(H, dtype=np.float32) + 0.5) / H * cells
    x = (np.arange(W, dtype=np.float32) + 0.5) / H * cells
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)       # smoothstep: no visible grid lines
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def render_background(bg: Background, H: int, W: int, ys: np.ndarray | None = None,
                      xs: np.ndarray | None = None) -> np.ndarray:
    """Backdrop (H', W', 3) float32 in [0, 1].

    ys, xs: sample positions in output pixels (default: pixel centres of H x W); the renderer passes its
    supersampled grid. Coordinates are normalised by H so the backdrop is the same at every image size."""
    if ys is None:
        ys = np.arange(H, dtype=np.float32)
    if xs is None:
        xs = np.arange(W, dtype=np.float32)
    yn = ((ys + 0.5) / H).astype(np.float32)[:, None]     # (H', 1) in [0, 1]
    xn = ((xs + 0.5) / H).astype(np.float32)[None, :]     # (1, W'), same unit as yn
    a = np.asarray(bg.color_a, np.float32)
    b = np.asarray(bg.color_b, np.float32)
    shape = (yn.shape[0], xn.shape[1])
    w: np.ndarray
    if bg.kind == "plain":
        w = np.zeros(shape, np.float32)
    elif bg.kind == "gradient":
        w = np.broadcast_to(yn * 0.8, shape)
    elif bg.kind in ("stripes", "checks"):
        c, s = np.cos(bg.angle), np.sin(bg.angle)
        pa = (xn * c + yn * s) / bg.period
        if bg.kind == "stripes":
            w = (pa - np.floor(pa) < 0.5) * 0.35      # low contrast: a backdrop, not a garment
        else:
            pb = (yn * c - xn * s) / bg.period
            w = ((np.floor(pa) + np.floor(pb)) % 2) * 0.3
    elif bg.kind == "blotches":
        n = _smooth_noise(bg.seed, len(ys) if len(ys) else 1, len(xs) if len(xs) else 1, cells=5)
        w = n * 0.6
    else:
        raise InputError(f"unknown background kind {bg.kind!r}; accepted: {', '.join(BACKGROUNDS)}")
    w = np.asarray(w, np.float32)[..., None]
    return (a + (b - a) * w).astype(np.float32)
