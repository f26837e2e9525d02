"""Tests for raygan.metrics.prdc: agreement with the paper's formulas and collapse detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raygan.metrics import prdc as prdc_module
from raygan.metrics.prdc import (
    PRDC,
    RealClassStats,
    calibrated_coverage,
    collapse_score,
    expected_coverage,
    min_real_per_class,
    per_class_prdc,
    per_class_prdc_from_stats,
    prdc,
    real_class_stats,
)


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


def test_per_class_scores_classes_with_at_most_k_fakes_with_nan_recall() -> None:
    # Coverage only needs real balls, so a class with k or fewer fakes is scored rather than
    # skipped (it used to count as fully collapsed); only recall, needing fake balls, is NaN.
    means = _class_means(num_classes=3, d=16)
    real, real_labels = _labelled_gaussians(means, per_class=100, seed=40)
    fake, fake_labels = _labelled_gaussians(means, per_class=100, seed=400)
    keep = (fake_labels != 2) | (torch.arange(len(fake_labels)) % 100 < 5)  # 5 fakes of class 2
    fake, fake_labels = fake[keep], fake_labels[keep]

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=3, k=5)

    assert sorted(per_class) == [0, 1, 2]
    assert math.isnan(per_class[2].recall)
    assert per_class[2].coverage > 0.0
    assert per_class[2].num_fake == 5
    assert not math.isnan(per_class[0].recall)


def test_class_without_fakes_is_absent_and_collapse_counts_it_as_zero() -> None:
    means = _class_means(num_classes=3, d=16)
    real, real_labels = _labelled_gaussians(means, per_class=100, seed=41)
    fake, fake_labels = _labelled_gaussians(means, per_class=100, seed=410)
    keep = fake_labels != 2
    fake, fake_labels = fake[keep], fake_labels[keep]

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=3)

    assert sorted(per_class) == [0, 1]
    calibrated = calibrated_coverage(per_class[0]) + calibrated_coverage(per_class[1])
    assert collapse_score(per_class, num_classes=3) == pytest.approx(1.0 - calibrated / 3)


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


def test_expected_coverage_is_the_papers_formula_with_n_real_and_m_fake() -> None:
    expected = _expected_coverage_identical(4000, 500, 5)
    assert expected_coverage(4000, 500, 5) == pytest.approx(expected)
    # The example: a perfect generator's raw coverage at 500 fakes vs 4000 reals.
    assert 1.0 - expected_coverage(4000, 500, 5) == pytest.approx(0.55, abs=0.01)


@pytest.mark.parametrize(
    ("num_real", "num_fake", "k", "tolerance"),
    # Tolerances are ~4 standard deviations of the mean of 40 trials, measured at these sizes.
    [(100, 100, 5, 0.012), (200, 20, 5, 0.03), (50, 200, 3, 0.008)],
)
def test_expected_coverage_matches_monte_carlo_on_identical_distributions(
    num_real: int, num_fake: int, k: int, tolerance: float
) -> None:
    generator = torch.Generator().manual_seed(num_real + num_fake + k)

    def draw(n: int) -> torch.Tensor:
        return torch.randn(n, 4, generator=generator, dtype=torch.float64)

    trials = 40
    mean_coverage = sum(prdc(draw(num_real), draw(num_fake), k).coverage for _ in range(trials))
    mean_coverage /= trials

    assert mean_coverage == pytest.approx(expected_coverage(num_real, num_fake, k), abs=tolerance)


# Calibrated collapse at several ratios of fakes to reals per class: 10 classes of 64-d Gaussians
# with 1000 reals each (the default cap, so the ratios are the ones the metric sees).
_NUM_CLASSES, _DIM, _REAL_PER_CLASS = 10, 64, 1000
_RATIOS = [1, 2, 5, 10, 20]


@pytest.fixture(scope="module")
def ratio_real_stats() -> RealClassStats:
    means = _class_means(_NUM_CLASSES, _DIM)
    real, real_labels = _labelled_gaussians(means, per_class=_REAL_PER_CLASS, seed=1000)
    return real_class_stats(real, real_labels, _NUM_CLASSES)


@pytest.mark.parametrize("ratio", _RATIOS)
def test_perfect_generator_scores_low_collapse_at_every_fake_to_real_ratio(
    ratio: int, ratio_real_stats: RealClassStats
) -> None:
    # Uncalibrated (1 - mean coverage) this scored 0.03 at 1:1 and ~0.8 at 1:20. With 50 fakes
    # a class (1:20) one fake set's score still varies by about +-0.04 in this 64-d space, so
    # the generator's score is the mean over up to five independent fake sets; fewer where
    # more fakes make one set's score steadier (and costlier).
    means = _class_means(_NUM_CLASSES, _DIM)
    scores = []
    for draw in range(min(ratio, 5)):
        fake, fake_labels = _labelled_gaussians(
            means, per_class=_REAL_PER_CLASS // ratio, seed=2000 + 100 * draw
        )
        per_class = per_class_prdc_from_stats(ratio_real_stats, fake, fake_labels)
        scores.append(collapse_score(per_class, _NUM_CLASSES))

    assert sum(scores) / len(scores) <= 0.1, scores


@pytest.mark.parametrize("ratio", _RATIOS)
def test_generator_repeating_one_image_per_class_scores_high_collapse_at_every_ratio(
    ratio: int, ratio_real_stats: RealClassStats
) -> None:
    per_class = _REAL_PER_CLASS // ratio
    means = _class_means(_NUM_CLASSES, _DIM)
    one_per_class, _ = _labelled_gaussians(means, per_class=1, seed=3000)
    # Exact copies would score the same (test_one_repeated_point_per_class_gives_high_collapse
    # has them), but make every fake-fake distance a tie that prdc recomputes exactly: seconds
    # per class at 1000 copies. A jitter far below the k-NN radii (~10) avoids the ties.
    jitter = 1e-3 * _gaussian(_NUM_CLASSES * per_class, _DIM, seed=3001)
    fake = one_per_class.repeat_interleave(per_class, dim=0) + jitter
    fake_labels = torch.arange(_NUM_CLASSES).repeat_interleave(per_class)

    per_class_result = per_class_prdc_from_stats(ratio_real_stats, fake, fake_labels)

    assert collapse_score(per_class_result, _NUM_CLASSES) >= 0.9


def test_perfect_generator_scores_low_collapse_with_reals_far_above_the_cap() -> None:
    # The example, which scored 0.55 uncalibrated: 4000 reals and 500 fakes per class.
    means = _class_means(num_classes=4, d=_DIM)
    real, real_labels = _labelled_gaussians(means, per_class=4000, seed=4000)
    fake, fake_labels = _labelled_gaussians(means, per_class=500, seed=5000)

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=4)

    assert all(result.num_real == prdc_module.DEFAULT_REAL_CAP for result in per_class.values())
    assert collapse_score(per_class, num_classes=4) <= 0.1


def test_real_class_stats_keeps_the_same_seeded_subset_of_at_most_cap_reals() -> None:
    means = _class_means(num_classes=3, d=8)
    real, real_labels = _labelled_gaussians(means, per_class=50, seed=50)
    keep = (real_labels != 2) | (torch.arange(150) % 50 < 20)  # class 2 has 20 reals
    real, real_labels = real[keep], real_labels[keep]

    stats = real_class_stats(real, real_labels, 3, k=5, cap=30)
    again = real_class_stats(real, real_labels, 3, k=5, cap=30)
    other_seed = real_class_stats(real, real_labels, 3, k=5, cap=30, seed=1)

    assert [len(features) for features in stats.features] == [30, 30, 20]
    assert all(torch.equal(a, b) for a, b in zip(stats.features, again.features, strict=True))
    assert not torch.equal(stats.features[0], other_seed.features[0])
    class_0 = real[real_labels == 0].double()
    assert all((class_0 == row).all(dim=1).any() for row in stats.features[0])


def test_per_class_prdc_from_cached_stats_equals_prdc_on_the_capped_reals() -> None:
    means = _class_means(num_classes=3, d=16)
    real, real_labels = _labelled_gaussians(means, per_class=80, seed=70)
    fake, fake_labels = _labelled_gaussians(means, per_class=40, seed=700)
    stats = real_class_stats(real, real_labels, 3, k=3, cap=60)

    per_class = per_class_prdc_from_stats(stats, fake, fake_labels)

    for c in range(3):
        assert per_class[c] == prdc(stats.features[c], fake[fake_labels == c], k=3)
        assert (per_class[c].num_real, per_class[c].num_fake, per_class[c].k) == (60, 40, 3)


def test_class_with_too_few_reals_for_k_raises_naming_the_class_and_its_count() -> None:
    means = _class_means(num_classes=3, d=8)
    real, real_labels = _labelled_gaussians(means, per_class=20, seed=80)
    keep = (real_labels != 2) | (torch.arange(60) % 20 < 5)  # class 2 has 5 reals
    real, real_labels = real[keep], real_labels[keep]
    fake, fake_labels = _labelled_gaussians(means, per_class=20, seed=800)

    with pytest.raises(ValueError, match=r"k=5.*at least 6 real.*class 2: 5"):
        per_class_prdc(real, real_labels, fake, fake_labels, num_classes=3, k=5)


def test_class_with_exactly_min_real_per_class_is_scored() -> None:
    assert min_real_per_class(5) == 6
    means = _class_means(num_classes=2, d=8)
    real, real_labels = _labelled_gaussians(means, per_class=min_real_per_class(5), seed=90)
    fake, fake_labels = _labelled_gaussians(means, per_class=20, seed=900)

    per_class = per_class_prdc(real, real_labels, fake, fake_labels, num_classes=2, k=5)

    assert sorted(per_class) == [0, 1]


def test_collapse_score_rejects_results_without_sample_sizes() -> None:
    with pytest.raises(ValueError, match="sample sizes"):
        collapse_score({0: PRDC(precision=1.0, recall=1.0, density=1.0, coverage=1.0)}, 1)
