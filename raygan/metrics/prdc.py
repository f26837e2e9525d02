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
from dataclasses import dataclass

import torch

# Upper bound on the entries of one block of the distance matrix (16M float64 = 128 MiB).
_MAX_BLOCK_ELEMENTS = 2**24

_FLOAT64_UNIT_ROUNDOFF = 2.0**-53


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> PRDC:
    """PRDC of fake features (M, d) against real features (N, d) with k-NN balls.

    Raises ValueError (message names the sizes) when N <= k or M <= k, since a point then
    has fewer than k neighbours other than itself.
    """
    real, fake = _validated_features(real, fake, k)
    band = _matmul_error_bound(real, fake)
    real_radii = _knn_radii(real, k, band)
    fake_radii = _knn_radii(fake, k, band)

    num_real, num_fake = real.shape[0], fake.shape[0]
    real_balls_per_fake = torch.zeros(num_fake, dtype=torch.int64, device=real.device)
    real_is_covered = torch.empty(num_real, dtype=torch.bool, device=real.device)
    real_is_recalled = torch.empty(num_real, dtype=torch.bool, device=real.device)
    for rows in _row_blocks(num_real, num_fake):
        distances = _approx_distances(real[rows], fake)  # (rows, M)
        _make_exact_near(distances, real[rows], fake, real_radii[rows, None], band)
        _make_exact_near(distances, real[rows], fake, fake_radii[None, :], band)
        fake_in_real_ball = distances < real_radii[rows, None]
        real_balls_per_fake += fake_in_real_ball.sum(dim=0)
        real_is_covered[rows] = fake_in_real_ball.any(dim=1)
        real_is_recalled[rows] = (distances < fake_radii[None, :]).any(dim=1)

    return PRDC(
        precision=(real_balls_per_fake > 0).double().mean().item(),
        recall=real_is_recalled.double().mean().item(),
        density=real_balls_per_fake.double().sum().item() / (k * num_fake),
        coverage=real_is_covered.double().mean().item(),
    )


def per_class_prdc(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    num_classes: int,
    k: int = 5,
) -> dict[int, PRDC]:
    """PRDC within each class c: real samples of class c vs fakes generated for class c.

    Classes with <= k samples on either side are skipped (absent from the result), because
    their k-NN balls are undefined; collapse_score counts them as fully collapsed.
    """
    _check_labels(real_labels, real, "real", num_classes)
    _check_labels(fake_labels, fake, "fake", num_classes)
    result: dict[int, PRDC] = {}
    for c in range(num_classes):
        real_c = real[real_labels == c]
        fake_c = fake[fake_labels == c]
        if real_c.shape[0] > k and fake_c.shape[0] > k:
            result[c] = prdc(real_c, fake_c, k)
    return result


def collapse_score(per_class: dict[int, PRDC], num_classes: int) -> float:
    """1 - mean over all num_classes classes of per-class coverage, in [0, 1].

    A class absent from per_class counts as coverage 0. About 1 - coverage of identical
    distributions (~0.03 at k=5) for real vs real; rises towards 1 as the generator drops
    modes within a class (coverage falls) or across classes (a class's fakes land elsewhere).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    unknown = sorted(c for c in per_class if not 0 <= c < num_classes)
    if unknown:
        raise ValueError(f"classes {unknown} are outside [0, {num_classes})")
    total_coverage = sum(result.coverage for result in per_class.values())
    return 1.0 - total_coverage / num_classes


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
    real = real.detach().to(dtype=torch.float64)
    fake = fake.detach().to(device=real.device, dtype=torch.float64)
    # A NaN distance compares False with everything and would silently skew every metric.
    for name, features in (("real", real), ("fake", fake)):
        if not torch.isfinite(features).all():
            raise ValueError(f"{name} features contain NaN or infinite values")
    return real, fake


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
