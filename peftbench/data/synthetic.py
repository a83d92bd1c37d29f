"""Deterministic synthetic segmentation tasks, sized for the CPU: one analogue per domain of the paper.

Each generator maps (numpy Generator, size S, variant) to an RGB image (S, S, 3) uint8 and a label map (S, S) uint8
(0/1 for binary tasks, class ids for multi-class). `variant` names one test set of a card with several (e.g. the
two polyp centres); "" draws a variant at random per image, as the real training sets mix their sources.
Textures are smoothed noise and the foreground shares its colours with distractors, so that the tasks need
context (shape, texture scale, shading), not a colour threshold. Lengths scale with S.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import binary_erosion, map_coordinates
from scipy.ndimage import shift as shift_image
from skimage.draw import bezier_curve, disk, ellipse, polygon
from skimage.filters import gaussian
from skimage.morphology import dilation
from skimage.morphology import disk as disk_footprint

from ..errors import UserError


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float, channels: int = 0) -> np.ndarray:
    """(S, S) or (S, S, channels) Gaussian noise smoothed by `sigma` px, rescaled to zero mean and unit std."""
    shape = (size, size, channels) if channels else (size, size)
    noise = gaussian(rng.normal(size=shape), sigma=sigma, channel_axis=-1 if channels else None)
    return (noise - noise.mean()) / (noise.std() + 1e-8)


def _texture(rng: np.random.Generator, size: int, colour, spread: float, sigma: float) -> np.ndarray:
    """(S, S, 3) float texture: a base colour plus spatially smoothed noise."""
    return np.asarray(colour, dtype=np.float64)[None, None] + spread * _smooth_noise(rng, size, sigma, 3)


def _mottled(rng: np.random.Generator, size: int, palette: np.ndarray, sigma: float) -> np.ndarray:
    """(S, S, 3) float natural texture: soft patches of the (K, 3) palette colours, patch size ~ `sigma` px."""
    weights = np.exp(3.0 * _smooth_noise(rng, size, sigma, len(palette)))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ palette + 6.0 * _smooth_noise(rng, size, 0.6, 3)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (S, S) or (S, S, 3) float array, values kept in their range."""
    return gaussian(image, sigma=sigma, channel_axis=-1 if image.ndim == 3 else None, preserve_range=True)


def _blend(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(S, S, 3) image with the (S, S, 3) layer (or colour) composited over it with (S, S) opacity `alpha`."""
    return image * (1 - alpha[..., None]) + np.asarray(layer) * alpha[..., None]


def _blob(rng: np.random.Generator, size: int, centre, radii, irregularity: float) -> np.ndarray:
    """(S, S) float: distance from `centre` in units of the randomly rotated ellipse `radii`, its boundary
    wobbled by smooth noise (relative amplitude `irregularity`); the blob is where the result is < 1."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    along = (yy - centre[0]) * np.cos(angle) + (xx - centre[1]) * np.sin(angle)
    across = -(yy - centre[0]) * np.sin(angle) + (xx - centre[1]) * np.cos(angle)
    distance = np.hypot(along / radii[0], across / radii[1])
    return distance * np.exp(irregularity * _smooth_noise(rng, size, size / 10))


def _curves(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """(S, S) bool: `count` one-pixel quadratic Bezier curves from one image border to another."""
    mask = np.zeros((size, size), bool)
    for _ in range(count):
        ends = rng.integers(0, size, size=(2, 2))
        ends[0, rng.integers(2)], ends[1, rng.integers(2)] = rng.choice([0, size - 1], size=2)
        ctrl = rng.integers(0, size, size=2)
        rr, cc = bezier_curve(*ends[0], *ctrl, *ends[1], weight=1.0, shape=(size, size))
        mask[rr, cc] = True
    return mask


def _vignette(size: int, centre, strength: float) -> np.ndarray:
    """(S, S) brightness factor, 1 at `centre` falling off quadratically to 1 - strength at the corners."""
    yy, xx = np.mgrid[:size, :size]
    return 1 - strength * ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (size**2 / 2)


def _pick_variant(rng: np.random.Generator, generator: str, variant: str) -> str:
    options = VARIANTS.get(generator, ())
    if variant and variant not in options:
        raise UserError(f"synthetic generator {generator!r}: unknown test set {variant!r} "
                        f"(known: {', '.join(options) or 'none, leave test_sets out of the card'})")
    return variant or (str(rng.choice(options)) if options else "")


class _PolypStyle(NamedTuple):
    """Imaging style of one endoscopy centre."""

    mucosa: tuple[float, float, float]  # mean RGB of the mucosa
    polyp_shift: tuple[float, float, float]  # polyp colour minus mucosa colour
    radius: tuple[float, float]  # polyp radius range, fraction of S
    grain: float  # per-pixel sensor noise std
    vignette: float  # darkening at the corners
    blur: float  # optics / compression blur, px at 64 px


POLYP_STYLES = {  # Kvasir: bright, large and varied polyps; CVC-ClinicDB: darker, orange, small, noisier video frames
    "kvasir": _PolypStyle((215, 115, 100), (15, 20, 12), (0.12, 0.3), 3.0, 0.45, 0.5),
    "cvc": _PolypStyle((175, 85, 55), (-5, 15, 18), (0.08, 0.17), 8.0, 0.6, 0.9),
}


def polyp(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Endoscopy: vignetted pink-red mucosa with folds and wet specular spots, one or two smooth dome-shaded
    polyps of a slightly different colour and finer texture; label = polyps. Variants "kvasir" and "cvc"."""
    style = POLYP_STYLES[_pick_variant(rng, "polyp", variant)]
    relief = 1 + 0.12 * _smooth_noise(rng, size, size / 12) + 0.04 * _smooth_noise(rng, size, 0.8)
    image = np.asarray(style.mucosa) * relief[..., None] + _texture(rng, size, (0, 0, 0), 4, size / 16)
    folds = _blur(_curves(rng, size, int(rng.integers(1, 4))).astype(float), size / 40)
    folds /= folds.max() + 1e-8
    light = rng.normal(size=2)
    light /= np.linalg.norm(light)  # one light direction: fold ridges and polyp domes lit from the same side
    image *= (1 - 0.4 * folds + 0.3 * shift_image(folds, 1.5 * light, mode="nearest"))[..., None]
    label = np.zeros((size, size), np.uint8)
    for _ in range(1 if rng.random() < 0.75 else 2):
        radius = size * rng.uniform(*style.radius)
        centre = rng.uniform(radius, size - radius, size=2)
        distance = _blob(rng, size, centre, (radius, radius * rng.uniform(0.7, 1.0)), 0.1)
        slope_y, slope_x = np.gradient(np.sqrt(np.clip(1 - distance**2, 0, 1)) * radius)
        normal = np.stack([-slope_y, -slope_x, np.ones_like(slope_y)]) / np.sqrt(1 + slope_y**2 + slope_x**2)
        shade = 0.55 + 0.5 * np.clip(np.tensordot([*(0.5 * light), 0.85], normal, 1), 0, None)  # Lambert
        image *= (1 - 0.25 * np.exp(-(((distance - 1.1) / 0.15) ** 2)))[..., None]  # contact shadow at the base
        dome = _texture(rng, size, np.add(style.mucosa, style.polyp_shift), 10, 1.0) * shade[..., None]
        image = _blend(image, dome, np.clip(_blur((distance < 1).astype(float), 0.8), 0, 1))
        label[distance < 1] = 1
        highlight = np.zeros((size, size))
        highlight[disk(centre + 0.45 * radius * light, max(1.0, 0.12 * radius), shape=(size, size))] = 1
        image = _blend(image, (255, 250, 245), _blur(highlight, 0.6))
    wet = np.zeros((size, size))
    wet[tuple(rng.integers(0, size, size=(2, int(rng.integers(3, 9)))))] = 1.0
    image = _blend(image, (255, 250, 245), np.clip(2 * _blur(wet, 0.7), 0, 1))
    image *= _vignette(size, rng.normal(size / 2, size / 16, size=2), style.vignette)[..., None]
    image += style.grain * rng.normal(size=image.shape)
    return _to_uint8(_blur(image, style.blur * size / 64)), label


LESION_PIGMENTS = np.array([[175, 120, 85], [95, 60, 40], [115, 105, 130]], float)  # light/dark brown, blue-grey


def lesion(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Dermoscopy: textured skin, one irregular pigmented lesion with colour variegation and a fuzzy border,
    dark hair strands over everything, sometimes the scope's dark circular rim; label = lesion."""
    _pick_variant(rng, "lesion", variant)
    skin = np.array([232, 188, 162]) * rng.uniform(0.85, 1.05)
    image = _texture(rng, size, skin, 8, size / 12) + _texture(rng, size, (0, 0, 0), 5, 0.6)
    radius = size * rng.uniform(0.17, 0.34)
    distance = _blob(rng, size, rng.normal(size / 2, size / 16, size=2), (radius, radius * rng.uniform(0.6, 1)), 0.3)
    pigment = _mottled(rng, size, LESION_PIGMENTS * rng.uniform(0.85, 1.1), size / 12)
    pigment *= (0.8 + 0.2 * np.clip(distance, 0, 1))[..., None]  # darker centre
    image = _blend(image, pigment, np.clip(_blur((distance < 1).astype(float), size / 64 * rng.uniform(0.8, 2.5)), 0, 1))
    label = (distance < 1).astype(np.uint8)
    hairs = _curves(rng, size, int(rng.choice([0, 0, 1, 3, 5])))
    image = _blend(image, (60, 42, 35), 0.7 * np.clip(1.5 * _blur(hairs.astype(float), 0.4), 0, 1))
    if rng.random() < 0.3:
        outside = _vignette(size, (size / 2, size / 2), 1.0) < 1 - rng.uniform(0.55, 0.7) ** 2
        image[outside] = 15
        label[outside] = 0
    return _to_uint8(image + 3 * rng.normal(size=image.shape)), label


def camo(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Camouflage: an animal-like blob whose mottled texture comes from the background's palette, only at a finer
    patch scale, with a subtle tint, soft shading and a faint outline; label = object."""
    _pick_variant(rng, "camo", variant)
    palette = rng.uniform(40, 200, size=3) + rng.normal(0, 35, size=(4, 3))
    patch = size / rng.uniform(8, 14)
    image = _mottled(rng, size, palette, patch)
    radius = size * rng.uniform(0.16, 0.27)
    centre = rng.uniform(size * 0.3, size * 0.7, size=2)
    distance = _blob(rng, size, centre, (radius, radius * rng.uniform(0.45, 0.8)), 0.15)
    for _ in range(rng.integers(0, 3)):  # head / limbs
        part = centre + rng.normal(0, radius * 0.8, size=2)
        distance = np.minimum(distance, _blob(rng, size, part, (radius * 0.45, radius * 0.3), 0.1))
    body = distance < 1
    skin = _mottled(rng, size, palette + rng.normal(0, 6, size=3), patch * rng.uniform(0.45, 0.65))
    skin *= (0.97 + 0.06 * np.clip(1 - distance, 0, 1))[..., None]
    image[body] = skin[body]
    outline = body & ~binary_erosion(body)
    image[outline] *= 0.9
    return _to_uint8(_blur(image, 0.5 * size / 64)), body.astype(np.uint8)


def _shape_mask(rng: np.random.Generator, size: int, centre, half: float) -> np.ndarray:
    """(S, S) bool: a rotated rectangle or an ellipse of half-extent ~`half` px at `centre`."""
    mask = np.zeros((size, size), bool)
    aspect = rng.uniform(0.4, 1.0)
    if rng.random() < 0.5:
        mask[ellipse(*centre, half, half * aspect, shape=(size, size), rotation=rng.uniform(0, np.pi))] = True
        return mask
    angle = rng.uniform(0, np.pi)
    corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * [half, half * aspect]
    rotated = corners @ [[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]] + centre
    mask[polygon(rotated[:, 0], rotated[:, 1], (size, size))] = True
    return mask


def shadow(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Outdoor scene: textured ground (two materials, an illumination ramp), dark paint patches and objects, the
    objects' cast shadows (the same texture darkened and tinted blue, soft penumbra) and sometimes the shadow of an
    occluder out of frame; label = shadow (about 10-30 % of pixels, as in SBU)."""
    _pick_variant(rng, "shadow", variant)
    ground = _mottled(rng, size, rng.uniform(110, 220, size=3) + rng.normal(0, 20, size=(2, 3)), size / 6)
    ground += _texture(rng, size, (0, 0, 0), 10, 0.8)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    ground *= (1 + 0.3 * (rng.normal() * yy + rng.normal() * xx))[..., None] * rng.uniform(0.6, 1.0)
    for _ in range(rng.integers(1, 4)):  # dark paint, stains, dark mats: dark but lit, texture not the ground's
        paint = _shape_mask(rng, size, rng.uniform(0, size, size=2), size * rng.uniform(0.08, 0.22))
        ground[paint] = _texture(rng, size, rng.uniform(20, 80, size=3), 8, 1.0)[paint]
    image, shadows, casters = ground, np.zeros((size, size), bool), np.zeros((size, size), bool)
    cast = rng.normal(size=2)
    cast *= size * rng.uniform(0.15, 0.3) / np.linalg.norm(cast)  # one sun: every shadow falls the same way
    for _ in range(rng.integers(1, 4)):
        caster = _shape_mask(rng, size, rng.uniform(size * 0.15, size * 0.85, size=2), size * rng.uniform(0.06, 0.14))
        colour = rng.uniform(30, 230, size=3)
        image[caster] = _texture(rng, size, colour, 12, 1.0)[caster]
        for step in np.linspace(0, 1, 12):
            shadows |= shift_image(caster.astype(float), step * cast, order=0) > 0.5
        casters |= caster
    if rng.random() < 0.5:  # an occluder out of frame (tree, building) casts a large irregular shadow
        edge = rng.choice([-0.1, 1.1], size=2) * size
        shadows |= _blob(rng, size, edge, (size * rng.uniform(0.35, 0.6),) * 2, 0.35) < 1
    shadows &= ~casters
    darkness = rng.uniform(0.35, 0.6) * np.array([1.0, 1.05, 1.2])
    penumbra = np.clip(_blur(shadows.astype(float), size / 64 * rng.uniform(0.7, 2.0)), 0, 1)
    image = image * (1 - penumbra[..., None] * (1 - darkness))
    return _to_uint8(image + 2 * rng.normal(size=image.shape)), shadows.astype(np.uint8)


class _TransStyle(NamedTuple):
    """Difficulty of a Trans10K-like test subset."""

    clutter: tuple[int, int]  # range of opaque background objects
    rim: float  # brightness added on the rims of transparent things
    things: tuple[int, int]  # range of transparent things
    occluders: int  # opaque objects drawn in front of the things


TRANS_STYLES = {"easy": _TransStyle((3, 6), 55.0, (1, 3), 0), "hard": _TransStyle((7, 12), 25.0, (2, 5), 2)}


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """(S, S) bool footprint of `count` opaque textured objects painted into the (S, S, 3) float `image`."""
    size = image.shape[0]
    painted = np.zeros((size, size), bool)
    for _ in range(count):
        mask = _shape_mask(rng, size, rng.uniform(0, size, size=2), size * rng.uniform(0.06, 0.2))
        image[mask] = _texture(rng, size, rng.uniform(20, 235, size=3), 15, 1.0)[mask]
        painted |= mask
    return painted


def trans(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Trans10K-v1-like, 3 classes: 0 background (cluttered room), 1 things (bottles/glasses: the background
    behind them refracted, bright rims and a highlight stripe), 2 stuff (windows/glass walls: faint tint and
    reflection streaks over the background, touching the border). Variants "easy" and "hard" (fainter rims,
    more clutter, opaque objects occluding the things)."""
    style = TRANS_STYLES[_pick_variant(rng, "trans", variant)]
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    wallpaper = np.sin((np.cos(angle := rng.uniform(0, np.pi)) * yy + np.sin(angle) * xx) * 2 * np.pi / (size / 8))
    image = _texture(rng, size, rng.uniform(90, 200, size=3), 15, size / 10) + 12 * wallpaper[..., None]
    _clutter(rng, image, int(rng.integers(*style.clutter)))
    label = np.zeros((size, size), np.uint8)
    if rng.random() < 0.7:
        top, left = rng.uniform(-0.3, 0.5, size=2) * size
        height, width = rng.uniform(0.45, 0.8, size=2) * size
        pane = (yy >= top) & (yy < top + height) & (xx >= left) & (xx < left + width)
        streaks = np.sin((yy + rng.uniform(0.5, 1.5) * xx) * 2 * np.pi / (size * rng.uniform(0.25, 0.5)))
        glass = _blend(image, rng.uniform(150, 255, size=3), np.full((size, size), 0.25))
        glass += 40 * np.clip(streaks - 0.5, 0, None)[..., None]
        image[pane] = glass[pane]
        image[pane & ~binary_erosion(pane)] += 0.5 * style.rim  # the pane's edge catches the light
        label[pane] = 2
    for _ in range(rng.integers(*style.things)):
        centre = rng.uniform(size * 0.15, size * 0.85, size=2)
        half = size * rng.uniform(0.08, 0.17)
        body = _shape_mask(rng, size, centre, half)
        if rng.random() < 0.5:  # bottle neck
            body |= (np.abs(xx - centre[1]) < half * 0.3) & (yy > centre[0] - 1.8 * half) & (yy < centre[0])
        # behind curved glass the background appears flipped and squeezed about the object's centre
        squeeze = rng.uniform(-0.9, -0.4)
        source = np.stack([centre[0] + (yy - centre[0]) * squeeze, centre[1] + (xx - centre[1]) * squeeze])
        refracted = np.stack([map_coordinates(image[..., c], source, order=1, mode="reflect") for c in range(3)], -1)
        rim = body & ~binary_erosion(body)
        stripe = body & (np.abs(xx - centre[1] + 0.4 * half) < max(1.0, 0.12 * half))
        image[body] = 0.9 * refracted[body] + 15
        image[rim | stripe] += style.rim
        label[body] = 1
    label[_clutter(rng, image, style.occluders)] = 0
    return _to_uint8(_blur(image, 0.5 * size / 64) + 2 * rng.normal(size=image.shape)), label


def leaf(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Small brown lesion spots on a textured green leaf over a textured soil background; label = lesions."""
    _pick_variant(rng, "leaf", variant)
    image = _texture(rng, size, (110, 90, 70), 25, 2.0)
    rr, cc = ellipse(size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4), size * rng.uniform(0.3, 0.42),
                     size * rng.uniform(0.18, 0.3), shape=(size, size), rotation=rng.uniform(0, np.pi))
    leaf_mask = np.zeros((size, size), bool)
    leaf_mask[rr, cc] = True
    image[leaf_mask] = _texture(rng, size, (60, 140, 50), 18, 1.0)[leaf_mask]
    label = np.zeros((size, size), np.uint8)
    inside = np.argwhere(leaf_mask)
    for _ in range(rng.integers(2, 7)):
        r, c = inside[rng.integers(len(inside))]
        spot = np.zeros_like(leaf_mask)
        spot[disk((r, c), rng.uniform(2, size / 10), shape=(size, size))] = True
        label[spot & leaf_mask] = 1
    lesions = label.astype(bool)
    image[lesions] = _texture(rng, size, (120, 95, 40), 15, 0.7)[lesions]
    return _to_uint8(_blur(image, 0.5)), label


def road(rng: np.random.Generator, size: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Thin connected curvilinear roads on a textured terrain; label = road pixels."""
    _pick_variant(rng, "road", variant)
    image = _texture(rng, size, (95, 110, 80), 30, 1.5)
    centre = np.zeros((size, size), bool)
    junction = rng.integers(size // 4, 3 * size // 4, size=2)
    for _ in range(rng.integers(2, 4)):  # every road leaves the image border and passes the junction
        edge = rng.integers(0, size, size=2)
        edge[rng.integers(2)] = rng.choice([0, size - 1])
        ctrl = rng.integers(0, size, size=2)
        rr, cc = bezier_curve(*edge, *ctrl, *junction, weight=1.0, shape=(size, size))
        centre[rr, cc] = True
    label = dilation(centre, disk_footprint(int(rng.integers(0, 2)) + 1)).astype(np.uint8)
    roads = label.astype(bool)
    image[roads] = _texture(rng, size, (150, 150, 145), 12, 0.7)[roads]
    return _to_uint8(_blur(image, 0.6)), label


GENERATORS = {"polyp": polyp, "lesion": lesion, "camo": camo, "shadow": shadow, "trans": trans,
              "leaf": leaf, "road": road}
VARIANTS = {"polyp": tuple(POLYP_STYLES), "trans": tuple(TRANS_STYLES)}  # test-set names; others have one test set


def generate(name: str, count: int, size: int, seed: int, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(count, S, S, 3) images and (count, S, S) labels from generator `name`, a pure function of the arguments.
    `variant`: one test set's imaging style ("" mixes them, for training and validation)."""
    if name not in GENERATORS:
        raise UserError(f"unknown synthetic generator {name!r} (known: {', '.join(GENERATORS)})")
    rng = np.random.default_rng(seed)
    pairs = [GENERATORS[name](rng, size, variant) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
