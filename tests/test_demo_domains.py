"""Tests for the embedded synthetic demo domains (source "photos", target "cartoons")."""

from __future__ import annotations

import numpy as np
import pytest

from raygan.demo_domains import CLASS_NAMES, DOMAINS, make_domain, paint_fills

NUM_CLASSES = len(CLASS_NAMES)


# --------------------------------------------------------------------------
# Feature helpers
# --------------------------------------------------------------------------


def _unique_colors_per_image(images: np.ndarray) -> np.ndarray:
    packed = (
        images[..., 0].astype(np.int64) << 16
        | images[..., 1].astype(np.int64) << 8
        | images[..., 2].astype(np.int64)
    )
    flat = np.sort(packed.reshape(len(images), -1), axis=1)
    return 1 + (np.diff(flat, axis=1) != 0).sum(axis=1)


def _corner_patch_std(images: np.ndarray, size: int = 6) -> np.ndarray:
    """Per-channel pixel std of the top-left patch, which is always background."""
    return images[:, :size, :size].astype(np.float32).std(axis=(1, 2)).mean(axis=-1)


def _shape_features(images: np.ndarray) -> np.ndarray:
    """Translation- and colour-polarity-invariant shape descriptor.

    Gradient magnitude ignores which side of an edge is brighter, and the
    magnitude of its Fourier transform ignores where the shape sits.
    """
    gray = images.astype(np.float32).mean(axis=-1) / 255.0
    grad_x = np.diff(gray, axis=2)[:, :-1]
    grad_y = np.diff(gray, axis=1)[:, :, :-1]
    spectrum = np.abs(np.fft.rfft2(np.hypot(grad_x, grad_y)))
    low_frequencies = np.concatenate([spectrum[:, :12, :12], spectrum[:, -11:, :12]], axis=1)
    return np.log1p(low_frequencies.reshape(len(images), -1))


def _standardize(features: np.ndarray) -> np.ndarray:
    return (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)


def _nearest_class_mean_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    class_means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(NUM_CLASSES)])
    distances = ((test_x[:, None, :] - class_means[None]) ** 2).sum(axis=-1)
    return float((distances.argmin(axis=1) == test_y).mean())


# --------------------------------------------------------------------------
# API contract
# --------------------------------------------------------------------------


def test_public_constants_list_ten_distinct_classes_and_two_domains() -> None:
    assert len(CLASS_NAMES) == 10
    assert len(set(CLASS_NAMES)) == 10
    assert DOMAINS == ("source", "target")


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_make_domain_returns_uint8_images_and_int64_labels_of_requested_size(
    domain: str, resolution: int
) -> None:
    images, labels = make_domain(domain, 23, seed=5, resolution=resolution)

    assert images.shape == (23, resolution, resolution, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (23,)
    assert labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES


def test_default_resolution_is_64() -> None:
    images, _ = make_domain("source", 2)
    assert images.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("n", [1, 10, 25, 1000])
def test_labels_are_balanced_like_index_mod_ten(domain: str, n: int) -> None:
    _, labels = make_domain(domain, n, seed=1, resolution=32)

    expected_counts = np.bincount(np.arange(n) % NUM_CLASSES, minlength=NUM_CLASSES)
    assert np.array_equal(np.bincount(labels, minlength=NUM_CLASSES), expected_counts)


def test_labels_are_shuffled_and_the_order_depends_on_the_seed() -> None:
    _, labels_a = make_domain("source", 200, seed=0, resolution=32)
    _, labels_b = make_domain("source", 200, seed=1, resolution=32)

    assert not np.array_equal(labels_a, np.arange(200) % NUM_CLASSES)
    assert not np.array_equal(labels_a, labels_b)


@pytest.mark.parametrize(
    ("kwargs", "bad_value"),
    [
        ({"domain": "paintings", "n": 4}, "paintings"),
        ({"domain": "source", "n": 0}, "0"),
        ({"domain": "target", "n": -3}, "-3"),
        ({"domain": "source", "n": 4, "resolution": 48}, "48"),
        ({"domain": "source", "n": 4, "seed": -7}, "-7"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(
    kwargs: dict[str, object], bad_value: str
) -> None:
    with pytest.raises(ValueError, match=bad_value):
        make_domain(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_gives_byte_identical_output(domain: str) -> None:
    images_a, labels_a = make_domain(domain, 150, seed=42)
    images_b, labels_b = make_domain(domain, 150, seed=42)

    assert images_a.tobytes() == images_b.tobytes()
    assert np.array_equal(labels_a, labels_b)


@pytest.mark.parametrize("domain", DOMAINS)
def test_different_seeds_give_different_images(domain: str) -> None:
    images_a, _ = make_domain(domain, 50, seed=0)
    images_b, _ = make_domain(domain, 50, seed=1)

    differing_images = (images_a != images_b).any(axis=(1, 2, 3))
    assert differing_images.mean() > 0.9


def test_source_and_target_differ_for_the_same_seed() -> None:
    source, _ = make_domain("source", 50, seed=3)
    target, _ = make_domain("target", 50, seed=3)

    assert (source != target).any(axis=(1, 2, 3)).all()


def test_images_within_one_call_are_not_repeated() -> None:
    # 300 spans several internal render chunks, so repeated chunks would show up.
    images, _ = make_domain("source", 300, seed=0, resolution=32)
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


# --------------------------------------------------------------------------
# Style: the two domains are trivially separable
# --------------------------------------------------------------------------


def test_flat_colour_count_separates_source_from_target() -> None:
    source, _ = make_domain("source", 300, seed=0)
    target, _ = make_domain("target", 300, seed=0)
    is_target = np.r_[np.zeros(300, bool), np.ones(300, bool)]

    predicted_target = _unique_colors_per_image(np.concatenate([source, target])) <= 16

    assert (predicted_target == is_target).mean() > 0.95


def test_background_noise_separates_source_from_target() -> None:
    source, _ = make_domain("source", 300, seed=0)
    target, _ = make_domain("target", 300, seed=0)
    is_target = np.r_[np.zeros(300, bool), np.ones(300, bool)]

    predicted_target = _corner_patch_std(np.concatenate([source, target])) < 1.0

    assert (predicted_target == is_target).mean() > 0.95


def test_target_images_have_dark_outlines_and_light_pastel_backgrounds() -> None:
    target, _ = make_domain("target", 200, seed=0)
    gray = target.astype(np.float32).mean(axis=-1)

    assert (gray.min(axis=(1, 2)) < 50).all()  # outline
    assert (gray[:, 0, 0] > 200).all()  # background


def test_shapes_stay_inside_the_frame() -> None:
    # Every border pixel of a cartoon equals its (flat) background colour.
    target, _ = make_domain("target", 1000, seed=0, resolution=64)
    border = np.concatenate(
        [target[:, 0], target[:, -1], target[:, :, 0], target[:, :, -1]], axis=1
    )
    assert (border == target[:, :1, 0]).all()


# --------------------------------------------------------------------------
# Content: the class is recognisable in both domains
# --------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_shape_classes_are_recognisable_by_nearest_class_mean(domain: str) -> None:
    train_images, train_labels = make_domain(domain, 1000, seed=0)
    test_images, test_labels = make_domain(domain, 500, seed=1)

    accuracy = _nearest_class_mean_accuracy(
        _shape_features(train_images),
        train_labels,
        _shape_features(test_images),
        test_labels,
    )

    assert accuracy > 0.6  # chance is 0.1


def test_class_means_learned_on_source_recognise_target_shapes() -> None:
    source_images, source_labels = make_domain("source", 1000, seed=0)
    target_images, target_labels = make_domain("target", 500, seed=1)

    # Standardising per domain removes the style offset and keeps the geometry.
    accuracy = _nearest_class_mean_accuracy(
        _standardize(_shape_features(source_images)),
        source_labels,
        _standardize(_shape_features(target_images)),
        target_labels,
    )

    assert accuracy > 0.5  # chance is 0.1


# --------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_generates_thousands_of_images_in_one_call(domain: str) -> None:
    images, labels = make_domain(domain, 2000, seed=9)

    assert images.shape == (2000, 64, 64, 3)
    assert np.array_equal(np.bincount(labels), np.full(NUM_CLASSES, 200))
    # No blank images anywhere, including the last chunk.
    assert (images.reshape(2000, -1).std(axis=1) > 5).all()


def test_paint_fills_repaints_only_the_shapes_fill():
    images, _ = make_domain("target", 8, seed=1)
    painted = paint_fills(images, (1, 2, 3))
    changed = (painted != images).any(-1)
    assert changed.any()
    assert (painted[changed] == (1, 2, 3)).all()
    corners = images[:, :1, :1]
    assert ((images == corners).all(-1) <= ~changed).all(), "the background was repainted"
