"""Tests for raygan.metrics.prdc: agreement with the paper's formulas and collapse detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raygan.metrics import prdc as prdc_module
from raygan.metrics.prdc import PRDC, collapse_score, per_class_prdc, prdc


def _reference_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> PRDC:
    """Direct transcription of Naeem et al. 2020, eqs. 1-4, with explicit loops."""

    def distance(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.sqrt(np.sum((x - y) ** 2)))

    def knn_radius(points: np.ndarray, i: int) -> float:
        others = [distance(points[i], points[j]) for j in range(len(points)) if j != i]
        return sorted(others)[k - 1]

    real_radius = [knn_radius(real, i) for i in range(len(real))]
    fake_radius = [knn_radius(fake, j) for j in range(len(fake))]
    inside_real = [[distance(y, x) < real_radius[i] for i, x in enumerate(real)] for y in fake]
    inside_fake = [[distance(x, y) < fake_radius[j] for j, y in enumerate(fake)] for x in real]

    num_real, num_fake = len(real), len(fake)
    precision = sum(any(row) for row in inside_real) / num_fake
    recall = sum(any(row) for row in inside_fake) / num_real
    density = sum(sum(row) for row in inside_real) / (k * num_fake)
    # Coverage: real point i is covered when its nearest fake lies inside its own ball.
    coverage = (
        sum(min(distance(x, y) for y in fake) < real_radius[i] for i, x in enumerate(real))
        / num_real
    )
    return PRDC(precision, recall, density, coverage)


def _assert_prdc_close(actual: PRDC, expected: PRDC, tol: float = 1e-9) -> None:
    for field in ("precision", "recall", "density", "coverage"):
        assert getattr(actual, field) == pytest.approx(getattr(expected, field), abs=tol), field


def _expected_coverage_identical(num_real: int, num_fake: int, k: int) -> float:
    """Naeem et al. 2020, Lemma 2: E[coverage] when real and fake share one distribution."""
    return 1.0 - math.prod((num_real - i) / (num_real + num_fake - i) for i in range(1, k + 1))


def _gaussian(n: int, d: int, seed: int, mean: torch.Tensor | float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) + mean


def _class_means(num_classes: int, d: int, separation: float = 50.0) -> torch.Tensor:
    """Well separated class centres, so no class's k-NN ball reaches another class."""
    return separation * torch.eye(num_classes, d, dtype=torch.float64)


def _labelled_gaussians(
    means: torch.Tensor, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.cat(
        [_gaussian(per_class, means.shape[1], seed + c, means[c]) for c in range(len(means))]
    )
    labels = torch.arange(len(means)).repeat_interleave(per_class)
    return features, labels


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("block_elements", [2**24, 50])
def test_prdc_matches_bruteforce_paper_formulas(
    k: int, block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny block budget forces one row per block, exercising the chunked accumulation.
    monkeypatch.setattr(prdc_module, "_MAX_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(k)
    # 60 and 45 points are past cdist's 25-row threshold, so its matmul path is in use.
    real = rng.normal(size=(60, 8))
    fake = rng.normal(loc=0.3, scale=1.2, size=(45, 8))

    actual = prdc(torch.from_numpy(real), torch.from_numpy(fake), k=k)

    _assert_prdc_close(actual, _reference_prdc(real, fake, k))


def test_prdc_matches_bruteforce_with_duplicated_points() -> None:
    # Copies of real points among the fakes create exact ties with k-NN radii, and the large
    # offset makes the matmul distance form round badly; results must still match exactly.
    rng = np.random.default_rng(7)
    real = rng.normal(loc=100.0, size=(40, 16))
    fake = np.concatenate([np.repeat(real[:3], 4, axis=0), rng.normal(loc=100.0, size=(30, 16))])

    actual = prdc(torch.from_numpy(real), torch.from_numpy(fake), k=3)

    _assert_prdc_close(actual, _reference_prdc(real, fake, 3))


def test_fake_repeating_each_point_more_than_k_times_has_zero_recall() -> None:
    # k+1 copies of every fake point give every fake ball radius exactly 0; open balls of
    # radius 0 contain nothing, so recall is 0 even though each fake equals a real point.
    real = _gaussian(200, 32, seed=0, mean=20.0)
    fake = real[:10].repeat_interleave(6, dim=0)

    assert prdc(real, fake, k=5).recall == 0.0


def test_fake_that_is_a_shuffled_copy_of_real_scores_exactly_one() -> None:
    # Each real ball holds its centre and k-1 neighbours (the k-th is on the open boundary),
    # so density is exactly 1; rounding that resolved boundary ties at random would not be.
    real = _gaussian(500, 64, seed=15, mean=5.0)
    shuffled = real[torch.randperm(500, generator=torch.Generator().manual_seed(0))]

    assert prdc(real, shuffled) == PRDC(precision=1.0, recall=1.0, density=1.0, coverage=1.0)


def test_real_vs_real_coverage_matches_theory_and_density_near_one() -> None:
    real = _gaussian(1000, 64, seed=1)
    held_out = _gaussian(1000, 64, seed=2)

    result = prdc(real, held_out, k=5)

    assert result.coverage == pytest.approx(_expected_coverage_identical(1000, 1000, 5), abs=0.03)
    assert 0.8 <= result.density <= 1.2


def test_expected_coverage_formula_is_about_097_for_equal_sizes() -> None:
    # Guards the theory the coverage test relies on: 1 - prod (N-i)/(N+M-i) ~ 1 - 2^-5.
    assert _expected_coverage_identical(1000, 1000, 5) == pytest.approx(0.969, abs=0.002)


def test_few_repeated_real_points_as_fake_give_low_coverage_recall_and_high_collapse() -> None:
    real = _gaussian(1000, 64, seed=3)
    fake = real[:5].repeat(200, 1)

    result = prdc(real, fake, k=5)

    assert result.coverage < 0.1
    assert result.recall < 0.1
    assert collapse_score({0: result}, num_classes=1) > 0.8


def test_held_out_real_samples_as_fake_give_low_collapse() -> None:
    means = _class_means(num_classes=5, d=32)
    real, real_labels = _labelled_gaussians(means, per_class=300, seed=10)
    fake, fake_labels = _labelled_gaussians(means, per_class=300, seed=100)

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=5)

    assert sorted(per_class) == [0, 1, 2, 3, 4]
    assert collapse_score(per_class, num_classes=5) < 0.15


def test_one_repeated_point_per_class_gives_high_collapse() -> None:
    means = _class_means(num_classes=5, d=32)
    real, real_labels = _labelled_gaussians(means, per_class=300, seed=20)
    # Every fake of class c is the first real sample of class c.
    fake = real[::300].repeat_interleave(300, dim=0)
    fake_labels = real_labels.clone()

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=5)

    assert all(result.recall < 0.1 for result in per_class.values())
    assert collapse_score(per_class, num_classes=5) > 0.8


def test_generator_ignoring_the_class_gives_high_collapse() -> None:
    # Fakes for every class come from class 0's distribution: perfect for class 0, a
    # dropped mode for every other class.
    num_classes = 10
    means = _class_means(num_classes, d=32)
    real, real_labels = _labelled_gaussians(means, per_class=200, seed=30)
    fake = _gaussian(200 * num_classes, 32, seed=300, mean=means[0])
    fake_labels = real_labels.clone()

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes)

    assert per_class[0].coverage > 0.9
    assert all(per_class[c].coverage == 0.0 for c in range(1, num_classes))
    assert collapse_score(per_class, num_classes) > 0.8


def test_fake_far_from_real_has_zero_precision_density_and_coverage() -> None:
    real = _gaussian(300, 16, seed=4)
    fake = _gaussian(300, 16, seed=5, mean=30.0)

    result = prdc(real, fake)

    assert result == PRDC(precision=0.0, recall=0.0, density=0.0, coverage=0.0)


def test_per_class_skips_classes_with_at_most_k_samples_and_collapse_counts_them_as_zero() -> None:
    means = _class_means(num_classes=3, d=16)
    real, real_labels = _labelled_gaussians(means, per_class=100, seed=40)
    fake, fake_labels = _labelled_gaussians(means, per_class=100, seed=400)
    keep = (fake_labels != 2) | (torch.arange(len(fake_labels)) % 100 < 5)  # 5 fakes of class 2
    fake, fake_labels = fake[keep], fake_labels[keep]

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=3, k=5)

    assert sorted(per_class) == [0, 1]
    expected = 1.0 - (per_class[0].coverage + per_class[1].coverage) / 3
    assert collapse_score(per_class, num_classes=3) == pytest.approx(expected)


def test_collapse_score_is_one_when_no_class_was_evaluated() -> None:
    assert collapse_score({}, num_classes=4) == 1.0


@pytest.mark.parametrize(("num_real", "num_fake"), [(5, 100), (100, 5), (3, 2)])
def test_prdc_raises_value_error_naming_sizes_when_a_side_has_at_most_k_samples(
    num_real: int, num_fake: int
) -> None:
    real = _gaussian(num_real, 4, seed=6)
    fake = _gaussian(num_fake, 4, seed=7)

    with pytest.raises(ValueError, match=f"N={num_real}.*M={num_fake}"):
        prdc(real, fake, k=5)


def test_prdc_rejects_mismatched_feature_dimensions() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        prdc(_gaussian(20, 4, seed=8), _gaussian(20, 5, seed=9))


def test_prdc_rejects_non_finite_features() -> None:
    real = _gaussian(20, 4, seed=10)
    real[3, 1] = float("nan")

    with pytest.raises(ValueError, match="NaN"):
        prdc(real, _gaussian(20, 4, seed=11))


def test_per_class_rejects_labels_outside_the_class_range() -> None:
    features = _gaussian(20, 4, seed=12)
    labels = torch.full((20,), 3)

    with pytest.raises(ValueError, match="labels"):
        per_class_prdc(features, labels, features, labels, num_classes=3)


def test_prdc_accepts_float32_features() -> None:
    real = _gaussian(100, 8, seed=13)
    fake = _gaussian(100, 8, seed=14)

    expected = prdc(real, fake)
    actual = prdc(real.float(), fake.float())

    # float32 rounding of the inputs may move a point across a ball boundary, rarely.
    for field in ("precision", "recall", "density", "coverage"):
        assert getattr(actual, field) == pytest.approx(getattr(expected, field), abs=0.02)
