"""Precision, recall, density and coverage (PRDC) in feature space, and a mode-collapse score.

Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models"; reference
implementation: clovaai/generative-evaluation-prdc. Every sample gets a k-NN ball whose radius
is the distance to its k-th nearest neighbour in its own set, excluding itself. Balls are open
(a point on the boundary is outside):

* precision: share of fake points inside at least one real ball (fidelity);
* recall: share of real points inside at least one fake ball (diversity);
* density: mean number of real balls containing a fake point, divided by k (~1 when fake
  matches real, unbounded above);
* coverage: share of real points whose own ball contains at least one fake point. Unlike
  recall it only uses real balls, so a few outlying fakes cannot inflate it; it is the
  quantity the collapse score is built on.

Coverage depends on the sample sizes: even a perfect generator covers a real point only when a
fake lands among its k nearest neighbours, which gets less likely as the fakes get fewer than
the reals. For real and fake drawn from one distribution, each real point's N - 1 other reals and
M fakes are exchangeable, so it is uncovered exactly when its k nearest others are all real:
E[coverage] = 1 - prod_{i=1..k} (N - i) / (N + M - i) (Naeem et al., Lemma 2; N real, M fake).
The collapse score divides each class's coverage by that value, so a perfect generator scores
~0 at any ratio of fake to real samples. Each class's reals are also subsampled to a fixed cap,
so the cost and the k-NN ball resolution do not drift with the data set's size.

Distances are computed in float64, a block of rows at a time, so 10k x 10k sets never hold
a full distance matrix in memory. The fast matmul form of the distance is off by rounding
(~1e-6 for points that coincide), which would let exact ties fall either way: e.g. fakes that
are exact copies of real points sit exactly on k-NN boundaries. So every distance close enough
to a ball radius for rounding to matter is recomputed from the difference vector, which is
deterministic per pair; all comparisons then match the paper's formulas exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

# Upper bound on the entries of one block of the distance matrix (16M float64 = 128 MiB).
_MAX_BLOCK_ELEMENTS = 2**24

_FLOAT64_UNIT_ROUNDOFF = 2.0**-53

# Real samples kept per class. The calibration removes the dependence on N itself, so the cap
# trades cost (N^2 distances once per class, N * M per evaluation) against the k-NN balls'
# resolution: at k=5 each of 1000 balls holds ~0.5% of a class, fine enough to see a dropped
# mode, and 1000 reals per class keep eval sets of 50 to 1000 fakes per class within the tested
# 1:20 to 1:1 ratios.
DEFAULT_REAL_CAP = 1000


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float  # NaN when there are k or fewer fakes: their k-NN balls are undefined
    density: float
    coverage: float
    # The sample sizes the scores were measured at, which coverage's expected value depends on.
    # Left out of comparisons: they describe the measurement, not the score.
    num_real: int = field(default=0, compare=False)
    num_fake: int = field(default=0, compare=False)
    k: int = field(default=0, compare=False)


@dataclass(frozen=True)
class RealClassStats:
    """The real side of per-class PRDC: each class's capped real features (float64) and their
    k-NN radii. It depends only on the real data, so build it once and reuse it."""

    k: int
    cap: int
    features: tuple[torch.Tensor, ...]  # class c: (N_c, d) with N_c <= cap
    radii: tuple[torch.Tensor, ...]  # class c: (N_c,)

    @property
    def num_classes(self) -> int:
        return len(self.features)


def min_real_per_class(k: int) -> int:
    """Fewest real samples a class needs for per-class PRDC: k neighbours besides itself."""
    return k + 1


def expected_coverage(num_real: int, num_fake: int, k: int) -> float:
    """E[coverage] when real and fake come from one distribution (Naeem et al. 2020, Lemma 2)."""
    if num_real < min_real_per_class(k) or num_fake < 0:
        raise ValueError(f"need N > k and M >= 0, got N={num_real}, M={num_fake}, k={k}")
    return 1.0 - math.prod((num_real - i) / (num_real + num_fake - i) for i in range(1, k + 1))


def calibrated_coverage(result: PRDC) -> float:
    """Coverage over its expected value for identical distributions at the same sample sizes,
    capped at 1: ~1 for a perfect generator whatever the sizes, ~0 for a collapsed one."""
    if result.k < 1 or result.num_fake < 1:
        raise ValueError(
            "calibrated coverage needs the sample sizes (num_real, num_fake, k) the result was "
            f"measured at, got {result}; use prdc() or per_class_prdc()"
        )
    expected = expected_coverage(result.num_real, result.num_fake, result.k)
    return min(1.0, result.coverage / expected)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> PRDC:
    """PRDC of fake features (M, d) against real features (N, d) with k-NN balls.

    Raises ValueError (message names the sizes) when N <= k or M <= k, since a point then
    has fewer than k neighbours other than itself.
    """
    real, fake = _validated_features(real, fake, k)
    real_radii = _knn_radii(real, k, _matmul_error_bound(real))
    return _prdc_with_real_radii(real, real_radii, fake, k)


def _prdc_with_real_radii(
    real: torch.Tensor, real_radii: torch.Tensor, fake: torch.Tensor, k: int
) -> PRDC:
    """PRDC of validated float64 sets given the real k-NN radii; needs at least one fake."""
    band = _matmul_error_bound(real, fake)
    num_real, num_fake = real.shape[0], fake.shape[0]
    # Only recall uses fake balls; precision, density and coverage stay defined with few fakes.
    fake_radii = _knn_radii(fake, k, band) if num_fake > k else None
    real_balls_per_fake = torch.zeros(num_fake, dtype=torch.int64, device=real.device)
    real_is_covered = torch.empty(num_real, dtype=torch.bool, device=real.device)
    real_is_recalled = torch.zeros(num_real, dtype=torch.bool, device=real.device)
    for rows in _row_blocks(num_real, num_fake):
        distances = _approx_distances(real[rows], fake)  # (rows, M)
        _make_exact_near(distances, real[rows], fake, real_radii[rows, None], band)
        if fake_radii is not None:
            _make_exact_near(distances, real[rows], fake, fake_radii[None, :], band)
            real_is_recalled[rows] = (distances < fake_radii[None, :]).any(dim=1)
        fake_in_real_ball = distances < real_radii[rows, None]
        real_balls_per_fake += fake_in_real_ball.sum(dim=0)
        real_is_covered[rows] = fake_in_real_ball.any(dim=1)

    return PRDC(
        precision=(real_balls_per_fake > 0).double().mean().item(),
        recall=real_is_recalled.double().mean().item() if fake_radii is not None else math.nan,
        density=real_balls_per_fake.double().sum().item() / (k * num_fake),
        coverage=real_is_covered.double().mean().item(),
        num_real=num_real,
        num_fake=num_fake,
        k=k,
    )


def per_class_prdc(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    num_classes: int,
    k: int = 5,
    real_cap: int = DEFAULT_REAL_CAP,
) -> dict[int, PRDC]:
    """PRDC within each class c: real samples of class c (at most real_cap of them) vs fakes
    generated for class c. Builds the real side on every call: to evaluate many fake sets
    against one real set, build real_class_stats once and use per_class_prdc_from_stats.

    Raises ValueError naming the classes with fewer than min_real_per_class(k) real samples.
    """
    stats = real_class_stats(real, real_labels, num_classes, k, real_cap)
    return per_class_prdc_from_stats(stats, fake, fake_labels)


def real_class_stats(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
    k: int = 5,
    cap: int = DEFAULT_REAL_CAP,
    seed: int = 0,
) -> RealClassStats:
    """Each class's real features, subsampled to cap (seeded, so every trial and node keeps
    the same ones), with their k-NN radii.

    Raises ValueError naming every class with fewer than min_real_per_class(k) samples.
    """
    if k < 1 or num_classes < 1:
        raise ValueError(f"k and num_classes must be >= 1, got k={k}, num_classes={num_classes}")
    if cap < min_real_per_class(k):
        raise ValueError(f"real cap must be >= {min_real_per_class(k)} for k={k}, got {cap}")
    if real.ndim != 2:
        raise ValueError(f"real features must be 2-D (n, d), got shape {tuple(real.shape)}")
    _check_labels(real_labels, real, "real", num_classes)
    _check_real_class_sizes(real_labels, num_classes, k)
    real = _finite_float64(real, "real", real.device)
    features, radii = [], []
    for c in range(num_classes):
        real_c = real[_capped_class_indices(real_labels, c, cap, seed).to(real.device)]
        features.append(real_c)
        radii.append(_knn_radii(real_c, k, _matmul_error_bound(real_c)))
    return RealClassStats(k=k, cap=cap, features=tuple(features), radii=tuple(radii))


def per_class_prdc_from_stats(
    stats: RealClassStats, fake: torch.Tensor, fake_labels: torch.Tensor
) -> dict[int, PRDC]:
    """PRDC within each class c: the capped reals of class c vs the fakes generated for c.

    Classes without fakes are absent from the result (collapse_score counts them as fully
    collapsed). With k or fewer fakes a class still gets precision, density and coverage, and
    a NaN recall.
    """
    dim = stats.features[0].shape[1]
    if fake.ndim != 2 or fake.shape[1] != dim:
        raise ValueError(f"fake features must have shape (M, {dim}), got {tuple(fake.shape)}")
    _check_labels(fake_labels, fake, "fake", stats.num_classes)
    fake = _finite_float64(fake, "fake", stats.features[0].device)
    fake_labels = fake_labels.to(fake.device)
    result: dict[int, PRDC] = {}
    for c, (real_c, radii_c) in enumerate(zip(stats.features, stats.radii, strict=True)):
        fake_c = fake[fake_labels == c]
        if fake_c.shape[0] > 0:
            result[c] = _prdc_with_real_radii(real_c, radii_c, fake_c, stats.k)
    return result


def collapse_score(per_class: dict[int, PRDC], num_classes: int) -> float:
    """1 - mean over all num_classes classes of calibrated per-class coverage, in [0, 1].

    Calibrated coverage (see calibrated_coverage) is ~1 for fakes from the real distribution
    at any sample sizes, so real vs real scores ~0. A class absent from per_class counts as
    coverage 0. The score rises towards 1 as the generator drops modes within a class
    (coverage falls) or across classes (a class's fakes land elsewhere).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    unknown = sorted(c for c in per_class if not 0 <= c < num_classes)
    if unknown:
        raise ValueError(f"classes {unknown} are outside [0, {num_classes})")
    total_coverage = sum(calibrated_coverage(result) for result in per_class.values())
    return 1.0 - total_coverage / num_classes


def _check_real_class_sizes(real_labels: torch.Tensor, num_classes: int, k: int) -> None:
    counts = torch.bincount(real_labels.cpu(), minlength=num_classes)
    needed = min_real_per_class(k)
    small = [f"class {c}: {int(n)}" for c, n in enumerate(counts) if n < needed]
    if small:
        raise ValueError(
            f"per-class PRDC with k={k} needs at least {needed} real samples in every class "
            f"(a k-th neighbour besides itself); too few in {', '.join(small)}"
        )


def _capped_class_indices(labels: torch.Tensor, c: int, cap: int, seed: int) -> torch.Tensor:
    """Indices of class c's samples; a seeded random subset of cap of them if there are more.
    Seeded per class, so one class's subset does not depend on the other classes' sizes."""
    indices = (labels.cpu() == c).nonzero().squeeze(1)
    if len(indices) <= cap:
        return indices
    generator = torch.Generator().manual_seed(seed * 1_000_003 + c)
    keep = torch.randperm(len(indices), generator=generator)[:cap].sort().values
    return indices[keep]


def _validated_features(
    real: torch.Tensor, fake: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks shapes, sizes and values; returns both sets as float64 on real's device."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, features in (("real", real), ("fake", fake)):
        if features.ndim != 2:
            raise ValueError(
                f"{name} features must be 2-D (n, d), got shape {tuple(features.shape)}"
            )
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}"
        )
    num_real, num_fake = real.shape[0], fake.shape[0]
    if num_real <= k or num_fake <= k:
        raise ValueError(
            f"PRDC with k={k} needs more than k samples on each side, "
            f"got N={num_real} real and M={num_fake} fake"
        )
    return _finite_float64(real, "real", real.device), _finite_float64(fake, "fake", real.device)


def _finite_float64(features: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    features = features.detach().to(device=device, dtype=torch.float64)
    # A NaN distance compares False with everything and would silently skew every metric.
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} features contain NaN or infinite values")
    return features


def _check_labels(
    labels: torch.Tensor, features: torch.Tensor, name: str, num_classes: int
) -> None:
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name} labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} labels must lie in [0, {num_classes})")


def _row_blocks(num_rows: int, num_cols: int) -> Iterator[slice]:
    """Slices of rows such that one (rows, num_cols) block stays within the element budget."""
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // num_cols)
    for start in range(0, num_rows, rows_per_block):
        yield slice(start, min(start + rows_per_block, num_rows))


def _knn_radii(features: torch.Tensor, k: int, band: float) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set, excluding itself."""
    num_points = features.shape[0]
    radii = torch.empty(num_points, dtype=torch.float64, device=features.device)
    for rows in _row_blocks(num_points, num_points):
        distances = _approx_distances(features[rows], features)
        # Each row holds the point's zero distance to itself; dropping exactly that one entry
        # means taking the (k+1)-th smallest (duplicates of the point still count as neighbours).
        approx_radii = distances.kthvalue(k + 1, dim=1).values
        # The exact radius is within band of the approximate one, so entries more than 2 * band
        # from it are on the right side of it whether approximate or exact; making the rest
        # exact makes the (k+1)-th smallest exact too.
        _make_exact_near(distances, features[rows], features, approx_radii[:, None], 2 * band)
        radii[rows] = distances.kthvalue(k + 1, dim=1).values
    return radii


def _approx_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) via |a|^2 + |b|^2 - 2 a.b: matmul speed, rounded."""
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def _matmul_error_bound(*feature_sets: torch.Tensor) -> float:
    """Upper bound on |approximate - exact distance| for any pair of points from the sets.

    The matmul form gets d^2 from a length-(dim + 2) dot product, whose rounding error is at
    most about (dim + 2) * u * (|a|^2 + |b|^2) for unit roundoff u; the difference form adds
    less. Taking 8x that as a margin, and since |sqrt(x) - sqrt(y)| <= sqrt(|x - y|), the
    distance error is below the square root. It is ~1e-5 for 1000-d features of norm ~30.
    """
    dim = feature_sets[0].shape[1]
    max_squared_norm = max(features.square().sum(dim=1).max().item() for features in feature_sets)
    return math.sqrt(8 * (dim + 2) * _FLOAT64_UNIT_ROUNDOFF * 2 * max_squared_norm)


def _make_exact_near(
    distances: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    boundary: torch.Tensor,
    band: float,
) -> None:
    """Replaces in place the entries within band of boundary by exact distances.

    Entries further than band from an exact boundary already compare against it as their
    exact value would. The exact distance |a_i - b_j| is computed from the difference vector,
    so it is the same bit pattern for the same pair wherever it is computed, and 0 for
    identical points: exact ties (copies of a point) then compare as ties.
    """
    flat_distances = distances.view(-1)  # cdist output is contiguous
    near = ((distances - boundary).abs() <= band).view(-1).nonzero().squeeze(1)
    # Bound the (pairs, d) difference tensor by the same budget as a distance block.
    pairs_per_batch = max(1, _MAX_BLOCK_ELEMENTS // max(1, a.shape[1]))
    for flat_index in near.split(pairs_per_batch):
        rows, cols = flat_index // distances.shape[1], flat_index % distances.shape[1]
        exact = torch.linalg.vector_norm(a[rows] - b[cols], dim=1)
        # index_copy_ rather than indexed assignment: the latter costs ~10 ms a call on CPU.
        flat_distances.index_copy_(0, flat_index, exact)
