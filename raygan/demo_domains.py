"""Synthetic, download-free demo domains for GAN fine-tuning.

Two labeled 10-class RGB domains are rendered procedurally from a seed:

* ``"source"`` ("photos"): shaded shapes on gradient/textured backgrounds with a
  soft drop shadow, slight blur and sensor-like noise.
* ``"target"`` ("cartoons"): the same shape classes, drawn with flat saturated
  palette fills, thick dark outlines and plain pastel backgrounds.

A conditional GAN is pretrained on ``source`` and fine-tuned to ``target``. The
shape geometry (class, position, scale, rotation) follows the same distribution
in both domains, so only the *style* changes between them.

Rendering is vectorised with numpy over batches of images: every shape is a
signed distance field (SDF, negative inside) evaluated on a coordinate grid, so
there are no per-pixel Python loops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "star",
    "hbars",
    "vbars",
    "checker",
)
DOMAINS = ("source", "target")
RESOLUTIONS = (32, 64, 128)

# Small chunks keep the float32 working arrays cache-sized (faster than one big
# batch) while bounding memory.
_CHUNK_SIZE = 64
# Pixel sizes (outline width, blur, shadow offset) are specified at 64x64 and
# scaled with the resolution so every resolution looks alike.
_REFERENCE_RESOLUTION = 64

FloatArray = np.ndarray
SdfFunction = Callable[[FloatArray, FloatArray], FloatArray]


# --------------------------------------------------------------------------
# Signed distance fields in shape-local units (the shape fits in radius ~1).
# ``u`` points right and ``v`` points down, like image columns and rows.
# --------------------------------------------------------------------------


def _sdf_box(u: FloatArray, v: FloatArray, half_w: float, half_h: float) -> FloatArray:
    qu = np.abs(u) - half_w
    qv = np.abs(v) - half_h
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    inside = np.minimum(np.maximum(qu, qv), 0.0)
    return outside + inside


def _sdf_union_of_boxes(
    u: FloatArray, v: FloatArray, boxes: list[tuple[float, float, float, float]]
) -> FloatArray:
    """Union of boxes given as (center_u, center_v, half_w, half_h)."""
    distances = [_sdf_box(u - cu, v - cv, hw, hh) for cu, cv, hw, hh in boxes]
    return np.minimum.reduce(distances)


def _sdf_circle(u: FloatArray, v: FloatArray) -> FloatArray:
    return np.hypot(u, v) - 0.85


def _sdf_square(u: FloatArray, v: FloatArray) -> FloatArray:
    return _sdf_box(u, v, 0.72, 0.72)


def _sdf_triangle(u: FloatArray, v: FloatArray) -> FloatArray:
    """Upward equilateral triangle centred on its centroid (Inigo Quilez' SDF)."""
    radius = 0.85  # half side length; vertices sit 2 * radius / sqrt(3) from the centre
    k = np.sqrt(3.0)
    px = np.abs(u) - radius
    py = -v + radius / k  # the formula expects y pointing up
    fold = px + k * py > 0.0
    px, py = (
        np.where(fold, (px - k * py) / 2.0, px),
        np.where(fold, (-k * px - py) / 2.0, py),
    )
    px = px - np.clip(px, -2.0 * radius, 0.0)
    return -np.hypot(px, py) * np.sign(py)


def _sdf_cross(u: FloatArray, v: FloatArray) -> FloatArray:
    return _sdf_union_of_boxes(u, v, [(0.0, 0.0, 0.88, 0.3), (0.0, 0.0, 0.3, 0.88)])


def _sdf_ring(u: FloatArray, v: FloatArray) -> FloatArray:
    return np.abs(np.hypot(u, v) - 0.62) - 0.26


def _sdf_diamond(u: FloatArray, v: FloatArray) -> FloatArray:
    # A tall rhombus so that it stays distinct from a (mildly rotated) square.
    half_w, half_h = 0.62, 0.98
    edge_scale = half_w * half_h / np.hypot(half_w, half_h)
    return (np.abs(u) / half_w + np.abs(v) / half_h - 1.0) * edge_scale


def _sdf_star(u: FloatArray, v: FloatArray) -> FloatArray:
    """Upward five-pointed star (Inigo Quilez' sdStar5)."""
    radius, inner_ratio = 1.0, 0.48
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px, py = np.abs(u), -v  # the formula expects y pointing up
    for kx, ky in ((k1x, k1y), (k2x, k2y)):
        reflect = 2.0 * np.maximum(kx * px + ky * py, 0.0)
        px, py = px - reflect * kx, py - reflect * ky
    px = np.abs(px)
    py = py - radius
    bax, bay = inner_ratio * -k1y, inner_ratio * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, radius)
    return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


_BAR_OFFSETS = (-0.64, 0.0, 0.64)


def _sdf_hbars(u: FloatArray, v: FloatArray) -> FloatArray:
    return _sdf_union_of_boxes(u, v, [(0.0, c, 0.8, 0.18) for c in _BAR_OFFSETS])


def _sdf_vbars(u: FloatArray, v: FloatArray) -> FloatArray:
    return _sdf_union_of_boxes(u, v, [(c, 0.0, 0.18, 0.8) for c in _BAR_OFFSETS])


def _sdf_checker(u: FloatArray, v: FloatArray) -> FloatArray:
    # 3x3 board with the four corners and the centre filled.
    cell = 0.54
    filled = [(-cell, -cell), (cell, -cell), (0.0, 0.0), (-cell, cell), (cell, cell)]
    return _sdf_union_of_boxes(u, v, [(cu, cv, cell / 2, cell / 2) for cu, cv in filled])


_SDF_BY_CLASS: tuple[SdfFunction, ...] = (
    _sdf_circle,
    _sdf_square,
    _sdf_triangle,
    _sdf_cross,
    _sdf_ring,
    _sdf_diamond,
    _sdf_star,
    _sdf_hbars,
    _sdf_vbars,
    _sdf_checker,
)
assert len(_SDF_BY_CLASS) == len(CLASS_NAMES)


# --------------------------------------------------------------------------
# Geometry shared by both domains
# --------------------------------------------------------------------------


def _sample_geometry(rng: np.random.Generator, n: int) -> dict[str, FloatArray]:
    """Per-image placement, drawn identically for both domains.

    Rotation is limited so square/diamond and hbars/vbars stay distinguishable.
    """
    return {
        "center_x": rng.uniform(-0.2, 0.2, n),
        "center_y": rng.uniform(-0.2, 0.2, n),
        "scale": rng.uniform(0.52, 0.7, n),
        "angle": np.deg2rad(rng.uniform(-18.0, 18.0, n)),
    }


def _pixel_grid(resolution: int) -> tuple[FloatArray, FloatArray]:
    """Pixel-centre coordinates in [-1, 1], shaped (1, R, R) for broadcasting."""
    axis = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x[None], y[None]


def _per_image(values: FloatArray) -> FloatArray:
    """Reshape a per-image vector (B,) so it broadcasts against (B, R, R)."""
    return values.astype(np.float32)[:, None, None]


def _local_coordinates(
    geometry: dict[str, FloatArray], resolution: int
) -> tuple[FloatArray, FloatArray]:
    """Map the pixel grid into each image's rotated, scaled shape frame."""
    x, y = _pixel_grid(resolution)
    dx = x - _per_image(geometry["center_x"])
    dy = y - _per_image(geometry["center_y"])
    cos, sin = _per_image(np.cos(geometry["angle"])), _per_image(np.sin(geometry["angle"]))
    scale = _per_image(geometry["scale"])
    u = (dx * cos + dy * sin) / scale
    v = (-dx * sin + dy * cos) / scale
    return u, v


def _signed_distance_pixels(
    labels: np.ndarray, geometry: dict[str, FloatArray], resolution: int
) -> FloatArray:
    """SDF of each image's shape in pixel units, shape (B, R, R)."""
    u, v = _local_coordinates(geometry, resolution)
    distance = np.empty_like(u)
    for label in np.unique(labels):
        members = labels == label
        distance[members] = _SDF_BY_CLASS[label](u[members], v[members])
    pixels_per_unit = _per_image(geometry["scale"]) * (resolution / 2.0)
    return distance * pixels_per_unit


# --------------------------------------------------------------------------
# Colour helpers
# --------------------------------------------------------------------------


def _hsv_to_rgb(hue: FloatArray, saturation: FloatArray, value: FloatArray) -> FloatArray:
    """Vectorised HSV -> RGB for (B,) arrays in [0, 1]; returns (B, 3)."""
    sector = np.floor(hue * 6.0).astype(np.int64) % 6
    f = hue * 6.0 - np.floor(hue * 6.0)
    p = value * (1.0 - saturation)
    q = value * (1.0 - f * saturation)
    t = value * (1.0 - (1.0 - f) * saturation)
    table = np.stack(
        [
            np.stack([value, t, p], -1),
            np.stack([q, value, p], -1),
            np.stack([p, value, t], -1),
            np.stack([p, q, value], -1),
            np.stack([t, p, value], -1),
            np.stack([value, p, q], -1),
        ],
        axis=0,
    )
    return table[sector, np.arange(len(hue))].astype(np.float32)


def _per_image_color(colors: FloatArray) -> FloatArray:
    """Reshape (B, 3) colours so they broadcast against (B, R, R, 3)."""
    return colors.astype(np.float32)[:, None, None, :]


def _to_uint8(images: FloatArray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------
# Source domain: "photos"
# --------------------------------------------------------------------------


def _sample_source_style(rng: np.random.Generator, n: int) -> dict[str, FloatArray]:
    # Shape and background sit in opposite brightness bands (either polarity)
    # so the shape always reads clearly despite natural, muted colours.
    dark_shape = rng.random(n) < 0.5
    light_values = rng.uniform(0.62, 0.92, n)
    dark_values = rng.uniform(0.18, 0.42, n)
    background_value = np.where(dark_shape, light_values, dark_values)
    shape_value = np.where(dark_shape, dark_values, light_values)
    background_hue = rng.random(n)
    return {
        "background_near": _hsv_to_rgb(
            background_hue, rng.uniform(0.08, 0.45, n), background_value
        ),
        # The far end of the gradient is a darker, slightly hue-shifted variant.
        "background_far": _hsv_to_rgb(
            (background_hue + rng.uniform(-0.08, 0.08, n)) % 1.0,
            rng.uniform(0.08, 0.45, n),
            background_value * rng.uniform(0.6, 0.9, n),
        ),
        "shape_color": _hsv_to_rgb(rng.random(n), rng.uniform(0.2, 0.6, n), shape_value),
        "gradient_angle": rng.uniform(0.0, 2.0 * np.pi, n),
        "light_angle": rng.uniform(0.0, 2.0 * np.pi, n),
        "texture_freq_x": rng.uniform(-3.0, 3.0, (n, 2)),
        "texture_freq_y": rng.uniform(-3.0, 3.0, (n, 2)),
        "texture_phase": rng.uniform(0.0, 2.0 * np.pi, (n, 2)),
    }


def _source_background(style: dict[str, FloatArray], resolution: int) -> FloatArray:
    """Linear colour gradient plus low-frequency wavy texture, (B, R, R, 3)."""
    x, y = _pixel_grid(resolution)
    angle = style["gradient_angle"]
    ramp = x * _per_image(np.cos(angle)) + y * _per_image(np.sin(angle))
    ramp = (ramp + 1.5) / 3.0
    near = _per_image_color(style["background_near"])
    far = _per_image_color(style["background_far"])
    background = near + (far - near) * ramp[..., None]
    texture = np.zeros_like(ramp)
    for wave in range(style["texture_phase"].shape[1]):
        phase = (
            np.pi * x * _per_image(style["texture_freq_x"][:, wave])
            + np.pi * y * _per_image(style["texture_freq_y"][:, wave])
            + _per_image(style["texture_phase"][:, wave])
        )
        texture += 0.04 * np.sin(phase)
    background += texture[..., None]
    return background


def _radial_lighting(
    style: dict[str, FloatArray], geometry: dict[str, FloatArray], resolution: int
) -> FloatArray:
    """Brightness factor (B, R, R) that falls off away from a highlight point."""
    x, y = _pixel_grid(resolution)
    scale = _per_image(geometry["scale"])
    light_angle = style["light_angle"]
    # The highlight sits off-centre on the shape, as if lit from one side.
    highlight_x = _per_image(geometry["center_x"]) + 0.45 * scale * _per_image(np.cos(light_angle))
    highlight_y = _per_image(geometry["center_y"]) + 0.45 * scale * _per_image(np.sin(light_angle))
    falloff = np.clip(np.hypot(x - highlight_x, y - highlight_y) / (1.6 * scale), 0.0, 1.0)
    return 1.25 - 0.55 * falloff


def _shift_down_right(mask: FloatArray, offset: int) -> FloatArray:
    shifted = np.zeros_like(mask)
    shifted[:, offset:, offset:] = mask[:, :-offset, :-offset]
    return shifted


def _render_source(
    labels: np.ndarray,
    geometry: dict[str, FloatArray],
    style: dict[str, FloatArray],
    rng: np.random.Generator,
    resolution: int,
) -> np.ndarray:
    pixel_scale = resolution / _REFERENCE_RESOLUTION
    distance = _signed_distance_pixels(labels, geometry, resolution)
    # A ~2 px soft edge stands in for camera blur; blurring only the mask is far
    # cheaper than blurring the RGB image and the background is smooth anyway.
    coverage = np.clip(0.5 - distance / (2.0 * pixel_scale), 0.0, 1.0)
    shadow = _shift_down_right(coverage, max(1, round(2 * pixel_scale)))

    images = _source_background(style, resolution)
    images *= (1.0 - 0.35 * shadow)[..., None]
    shape = (
        _per_image_color(style["shape_color"])
        * _radial_lighting(style, geometry, resolution)[..., None]
    )
    shape -= images
    shape *= coverage[..., None]
    images += shape  # background + coverage * (shape - background)

    # Uniform noise (std ~0.026) is several times cheaper to draw than Gaussian
    # and looks the same at this amplitude.
    noise = rng.random(images.shape, dtype=np.float32)
    noise -= 0.5
    noise *= 0.09
    images += noise
    return _to_uint8(images)


# --------------------------------------------------------------------------
# Target domain: "cartoons"
# --------------------------------------------------------------------------

_CARTOON_FILLS = (
    np.array(
        [
            (230, 40, 45),  # red
            (30, 100, 225),  # blue
            (40, 175, 70),  # green
            (250, 200, 20),  # yellow
            (245, 120, 20),  # orange
            (145, 55, 190),  # purple
            (235, 60, 160),  # pink
        ],
        dtype=np.float32,
    )
    / 255.0
)
_CARTOON_BACKGROUNDS = (
    np.array(
        [
            (255, 236, 240),  # blush
            (225, 240, 255),  # sky
            (230, 250, 225),  # mint
            (255, 248, 215),  # cream
            (240, 230, 255),  # lavender
            (255, 232, 215),  # peach
        ],
        dtype=np.float32,
    )
    / 255.0
)
_CARTOON_OUTLINE = np.array((30, 24, 40), dtype=np.float32) / 255.0
_BACKGROUND, _FILL, _OUTLINE = 0, 1, 2  # palette slots, in the order stacked below
# The outline straddles the shape boundary: 1.8 px inside plus 1.2 px outside
# (at 64x64), so the silhouette barely grows relative to the source domain.
_OUTLINE_INSIDE_PX, _OUTLINE_OUTSIDE_PX = 1.8, 1.2


def _sample_target_style(rng: np.random.Generator, n: int) -> dict[str, FloatArray]:
    return {
        "shape_color": _CARTOON_FILLS[rng.integers(0, len(_CARTOON_FILLS), n)],
        "background_color": _CARTOON_BACKGROUNDS[rng.integers(0, len(_CARTOON_BACKGROUNDS), n)],
    }


def _render_target(
    labels: np.ndarray,
    geometry: dict[str, FloatArray],
    style: dict[str, FloatArray],
    resolution: int,
) -> np.ndarray:
    pixel_scale = resolution / _REFERENCE_RESOLUTION
    distance = _signed_distance_pixels(labels, geometry, resolution)
    # Hard thresholds keep each image to exactly three flat colours, so the image
    # is a per-image palette lookup.
    palette_index = np.full(distance.shape, _BACKGROUND, dtype=np.uint8)
    palette_index[distance < _OUTLINE_OUTSIDE_PX * pixel_scale] = _OUTLINE
    palette_index[distance <= -_OUTLINE_INSIDE_PX * pixel_scale] = _FILL

    batch = len(labels)
    palettes = np.stack(
        [
            style["background_color"],
            style["shape_color"],
            np.broadcast_to(_CARTOON_OUTLINE, (batch, 3)),
        ],
        axis=1,
    )
    palettes = _to_uint8(palettes)
    return palettes[np.arange(batch)[:, None, None], palette_index]


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate_arguments(domain: str, n: int, seed: int, resolution: int) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    if not _is_integer(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_integer(resolution) or resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")


def _slice_params(params: dict[str, FloatArray], start: int, stop: int) -> dict[str, FloatArray]:
    return {name: values[start:stop] for name, values in params.items()}


def make_domain(
    domain: str, n: int, seed: int = 0, resolution: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` labeled images of a synthetic demo domain.

    Args:
        domain: ``"source"`` (photo-like) or ``"target"`` (cartoon-like).
        n: number of images, >= 1.
        seed: non-negative seed; the same (domain, n, seed, resolution) always
            yields byte-identical output.
        resolution: image side length, one of 32, 64, 128.

    Returns:
        ``(images, labels)``: uint8 array ``(n, resolution, resolution, 3)`` and
        int64 array ``(n,)`` whose classes index :data:`CLASS_NAMES`. Classes are
        balanced (label ``i % 10``) and shuffled by the seed.

    Raises:
        ValueError: for an unknown domain, ``n < 1``, a negative seed or an
            unsupported resolution; the message names the bad value.
    """
    _validate_arguments(domain, n, seed, resolution)
    n = int(n)
    # Distinct streams per domain so the two domains never share draws.
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain)])

    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASS_NAMES))
    geometry = _sample_geometry(rng, n)
    if domain == "source":
        style = _sample_source_style(rng, n)
    else:
        style = _sample_target_style(rng, n)

    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK_SIZE):
        stop = min(start + _CHUNK_SIZE, n)
        chunk_labels = labels[start:stop]
        chunk_geometry = _slice_params(geometry, start, stop)
        chunk_style = _slice_params(style, start, stop)
        if domain == "source":
            images[start:stop] = _render_source(
                chunk_labels, chunk_geometry, chunk_style, rng, resolution
            )
        else:
            images[start:stop] = _render_target(
                chunk_labels, chunk_geometry, chunk_style, resolution
            )
    return images, labels


def paint_fills(images: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Target images with every shape's fill painted `color` (uint8 RGB): what a generator
    that has collapsed to one colour draws. The fill is every pixel that is neither the
    image's background (its corner's colour: shapes never reach a corner) nor the outline."""
    background = images[:, :1, :1, :]
    outline = (images == _to_uint8(_CARTOON_OUTLINE)).all(-1, keepdims=True)
    fill = (images != background).any(-1, keepdims=True) & ~outline
    return np.where(fill, np.asarray(color, dtype=np.uint8), images)
