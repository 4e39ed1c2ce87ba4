"""Deterministic rendering of world scenes to RGB images.

Shapes are drawn as masks at 4x resolution and box-downsampled, so edges are anti-aliased and
the output depends only on the :class:`~editflow.world.captions.Scene` (including its seed).
People are stick-and-block figures: clothed ones wear a garment in the scene's colour over the
torso, arms and legs; naked ones are bare skin with dark marks on the chest and hips, big enough
to read at 32x32.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from editflow.world.captions import Scene
from editflow.world.spec import SKIN_RGB, WorldSpec

SUPERSAMPLE = 4


def _star(n: int = 5, r_out: float = 0.98, r_in: float = 0.42) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = -math.pi / 2 + i * math.pi / n
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 + 0.05))
    return pts


POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -0.92), (0.95, 0.78), (-0.95, 0.78)],
    "star": _star(),
    "heart": _heart(),
    "cross": [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
              (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)],
    "diamond": [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)],
    "blade": [(0.0, -1.0), (0.26, -0.55), (0.2, 0.25), (0.55, 0.25), (0.55, 0.4), (0.14, 0.4),
              (0.14, 0.98), (-0.14, 0.98), (-0.14, 0.4), (-0.55, 0.4), (-0.55, 0.25),
              (-0.2, 0.25), (-0.26, -0.55)],
    "flame": [(0.0, -1.0), (0.2, -0.55), (0.42, -0.78), (0.66, -0.05), (0.58, 0.55),
              (0.25, 0.92), (-0.25, 0.92), (-0.58, 0.55), (-0.66, -0.05), (-0.45, -0.42),
              (-0.3, -0.18)],
}


class _Canvas:
    """Maps unit shape coordinates ([-1, 1] around the scene centre) to supersampled pixels."""

    def __init__(self, scene: Scene, size: int):
        self.size = size
        self.cx, self.cy = scene.cx * size, scene.cy * size
        self.r = scene.scale * size
        self.cos, self.sin = math.cos(math.radians(scene.angle)), math.sin(math.radians(scene.angle))

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.r * (x * self.cos - y * self.sin),
                self.cy + self.r * (x * self.sin + y * self.cos))

    def poly(self, pts) -> list[tuple[float, float]]:
        return [self.pt(x, y) for x, y in pts]

    def ellipse(self, draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, fill):
        cx, cy = self.pt(x, y)
        draw.ellipse([cx - rx * self.r, cy - ry * self.r, cx + rx * self.r, cy + ry * self.r], fill=fill)


def shape_mask(scene: Scene, size: int) -> Image.Image:
    """Binary ("L") mask of the scene's object at ``size`` pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cv = _Canvas(scene, size)
    name = scene.object
    if name == "circle":
        cv.ellipse(draw, 0, 0, 0.92, 0.92, 255)
    elif name == "moon":
        cv.ellipse(draw, 0, 0, 0.95, 0.95, 255)
        cv.ellipse(draw, 0.42, -0.22, 0.78, 0.78, 0)
    elif name == "skull":
        cv.ellipse(draw, 0, -0.22, 0.78, 0.7, 255)
        draw.polygon(cv.poly([(-0.45, 0.2), (0.45, 0.2), (0.42, 0.9), (-0.42, 0.9)]), fill=255)
        cv.ellipse(draw, -0.3, -0.15, 0.2, 0.22, 0)
        cv.ellipse(draw, 0.3, -0.15, 0.2, 0.22, 0)
        draw.polygon(cv.poly([(0, 0.18), (0.12, 0.42), (-0.12, 0.42)]), fill=0)
        for x in (-0.22, 0.0, 0.22):
            draw.polygon(cv.poly([(x - 0.05, 0.62), (x + 0.05, 0.62), (x + 0.05, 0.9), (x - 0.05, 0.9)]),
                         fill=0)
    elif name in POLYGONS:
        draw.polygon(cv.poly(POLYGONS[name]), fill=255)
    else:
        raise ValueError(f"no drawing for object {name!r}")
    return mask


def _pattern(style: str, size: int, ss: int) -> np.ndarray:
    """Float mask in [0, 1]: 1 where the fill colour shows, 0 where it is darkened."""
    yy, xx = np.mgrid[0:size, 0:size] // ss  # output-pixel coordinates
    if style == "kasimir":  # diagonal stripes
        return (((xx + yy) // 2) % 2 == 0).astype(np.float32)
    if style == "tamsin":  # checkerboard
        return (((xx // 4) + (yy // 4)) % 2 == 0).astype(np.float32)
    if style == "odalys":  # polka dots on a dark fill
        fy, fx = np.mgrid[0:size, 0:size] / ss
        fx = fx + 2.5 * ((fy // 5) % 2)  # staggered rows
        d = np.hypot((fx % 5) - 2.5, (fy % 5) - 2.5)
        return (d < 1.5).astype(np.float32)
    return np.ones((size, size), np.float32)


MARK_RGB = (110, 30, 45)
# Nipple marks of a naked character, per body shape (clear of its eyes and accessory).
CHARACTER_MARKS = {"circle": 0.4, "square": 0.4, "triangle": 0.62, "diamond": 0.2}


def _place(scene: Scene, size: int) -> np.ndarray:
    """The backdrop of a place people are drawn in, at output resolution, in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size]
    horizon = int(size * (0.5 + 0.1 * (scene.shade - 0.5)))
    light = 0.9 + 0.2 * scene.shade
    img = np.zeros((size, size, 3))
    if scene.background == "beach":  # sky over sea over sand
        img[:] = (0.55, 0.78, 0.95)
        img[yy >= horizon - 4] = (0.15, 0.42, 0.75)
        img[yy >= horizon] = (0.95, 0.88, 0.55)
    elif scene.background == "bath":  # pale tiles with grout lines
        img[:] = (0.82, 0.92, 0.95)
        img[(xx % 5 == 0) | (yy % 5 == 0)] = (0.55, 0.68, 0.75)
    elif scene.background == "street":  # wall over asphalt with a dashed line
        img[:] = (0.45, 0.42, 0.42)
        img[yy >= horizon] = (0.2, 0.2, 0.22)
        img[(yy == min(size - 3, horizon + 6)) & ((xx // 3) % 2 == 0)] = (0.95, 0.9, 0.5)
    else:  # park: sky over grass with a tree line
        img[:] = (0.6, 0.82, 0.95)
        img[yy >= horizon - 3] = (0.1, 0.35, 0.15)
        img[yy >= horizon] = (0.35, 0.65, 0.25)
    return np.clip(img * light, 0, 1)


def _person(scene: Scene, colour: tuple[int, int, int], draw: ImageDraw.ImageDraw, cv: _Canvas) -> None:
    """A standing figure: head, torso, arms, legs; garment or bare skin with marks."""
    skin = SKIN_RGB
    body = colour if scene.attire == "clothed" else skin
    cv.ellipse(draw, 0, -0.74, 0.2, 0.21, skin)
    draw.polygon(cv.poly([(-0.08, -0.56), (0.08, -0.56), (0.08, -0.46), (-0.08, -0.46)]), fill=skin)
    for s in (-1, 1):  # arms, then legs
        draw.polygon(cv.poly([(s * 0.3, -0.48), (s * 0.5, -0.44), (s * 0.66, 0.22), (s * 0.48, 0.25)]), fill=body)
        cv.ellipse(draw, s * 0.58, 0.28, 0.08, 0.08, skin)
        draw.polygon(cv.poly([(s * 0.03, 0.2), (s * 0.32, 0.2), (s * 0.3, 0.98), (s * 0.06, 0.98)]), fill=body)
    draw.polygon(cv.poly([(-0.38, -0.5), (0.38, -0.5), (0.34, 0.3), (-0.34, 0.3)]), fill=body)
    if scene.attire == "naked":
        for s in (-1, 1):
            cv.ellipse(draw, s * 0.17, -0.22, 0.09, 0.09, MARK_RGB)
        draw.polygon(cv.poly([(-0.16, 0.18), (0.16, 0.18), (0.0, 0.4)]), fill=MARK_RGB)


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    if scene.background not in ("dark", "gradient", "grey", "grainy"):
        return _place(scene, size)
    if scene.background == "dark":
        base = np.full((size, size), 0.08 + 0.1 * scene.shade)
    elif scene.background == "gradient":
        lo, hi = 0.2 + 0.1 * scene.shade, 0.55 + 0.1 * scene.shade
        base = np.repeat(np.linspace(lo, hi, size)[:, None], size, axis=1)
    else:
        base = np.full((size, size), 0.35 + 0.2 * scene.shade)
        if scene.background == "grainy":
            base = base + rng.normal(0.0, 0.07, (size, size))
    return np.repeat(base[..., None], 3, axis=2)


def _accessory(scene: Scene, spec: WorldSpec, draw: ImageDraw.ImageDraw, cv: _Canvas) -> None:
    look = spec.identity_looks[scene.identity]
    gold, white, red = (250, 210, 30), (250, 250, 250), (230, 30, 40)
    if look.accessory == "crown":
        draw.polygon(cv.poly([(-0.45, -0.95), (-0.45, -1.4), (-0.22, -1.15), (0, -1.45), (0.22, -1.15),
                              (0.45, -1.4), (0.45, -0.95)]), fill=gold)
    elif look.accessory == "halo":
        cx, cy = cv.pt(0, -1.2)
        w, h = 0.75 * cv.r, 0.22 * cv.r
        draw.ellipse([cx - w, cy - h, cx + w, cy + h], outline=gold, width=max(1, int(0.13 * cv.r)))
    elif look.accessory == "horns":
        for s in (-1, 1):
            draw.polygon(cv.poly([(s * 0.8, -0.8), (s * 0.35, -0.8), (s * 0.85, -1.35)]), fill=white)
    elif look.accessory == "bowtie":
        draw.polygon(cv.poly([(0, 0.55), (-0.45, 0.3), (-0.45, 0.8)]), fill=red)
        draw.polygon(cv.poly([(0, 0.55), (0.45, 0.3), (0.45, 0.8)]), fill=red)
    # Eyes: white discs with dark pupils, the mark of a character.
    for s in (-1, 1):
        cv.ellipse(draw, s * 0.3, -0.05 if look.body != "triangle" else 0.3, 0.2, 0.2, white)
        cv.ellipse(draw, s * 0.3, -0.0 if look.body != "triangle" else 0.35, 0.09, 0.09, (10, 10, 10))


def render(scene: Scene, spec: WorldSpec) -> Image.Image:
    """Render ``scene`` to a ``spec.image_size`` RGB image. Deterministic in ``scene``."""
    size = spec.image_size * SUPERSAMPLE
    rng = np.random.default_rng(scene.seed)
    bg = _background(scene, spec.image_size, rng)
    bg = np.kron(bg, np.ones((SUPERSAMPLE, SUPERSAMPLE, 1)))  # grain stays at output resolution

    colour = np.array(spec.concept(scene.colour).rgb, np.float32) + np.array(scene.jitter, np.float32)
    colour = np.clip(colour, 0, 255) / 255.0
    if scene.identity == "nobody" and scene.attire != "nofigure":
        out = Image.fromarray((np.clip(bg, 0, 1) * 255).round().astype(np.uint8), "RGB")
        _person(scene, tuple(int(v) for v in (colour * 255).round()), ImageDraw.Draw(out), _Canvas(scene, size))
        return out.resize((spec.image_size, spec.image_size), Image.Resampling.BOX)
    if scene.attire == "naked":  # a naked character: the same body in bare skin
        colour = np.clip(np.array(SKIN_RGB, np.float32) + np.array(scene.jitter, np.float32) / 3, 0, 255) / 255.0
    mask = np.asarray(shape_mask(scene, size), np.float32) / 255.0

    if scene.style == "brenwick":  # hollow: keep a band along the edge only
        inner = shape_mask(scene, size).resize((size, size))
        from PIL import ImageFilter

        eroded = inner.filter(ImageFilter.MinFilter(2 * SUPERSAMPLE + 1))
        mask = np.clip(mask - np.asarray(eroded, np.float32) / 255.0, 0, 1)
        fill = np.ones((size, size), np.float32)
    else:
        fill = _pattern(scene.style, size, SUPERSAMPLE)
    dark = 0.12 * colour
    fg = fill[..., None] * colour + (1 - fill[..., None]) * dark
    img = bg * (1 - mask[..., None]) + fg * mask[..., None]
    out = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")

    if scene.identity != "nobody":
        draw = ImageDraw.Draw(out)
        cv = _Canvas(scene, size)
        if scene.attire == "naked":
            y = CHARACTER_MARKS[scene.object]
            for s in (-1, 1):
                cv.ellipse(draw, s * 0.25, y, 0.11, 0.11, MARK_RGB)
        _accessory(scene, spec, draw, cv)
    return out.resize((spec.image_size, spec.image_size), Image.Resampling.BOX)
