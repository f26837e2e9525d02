"""Scoring a generator against the real target data.

The real side (classifier, real features) is computed once per data set and extractor and
cached on disk, so each evaluation only generates, extracts fake features and compares.
FID and KID use torchmetrics' implementations, fed with features we already extracted (the
same features serve precision/recall/density/coverage). The colour FD is the same Fréchet
distance over each image's colour statistics, which the classifier's features barely see.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn

from raygan.data import LabeledImages
from raygan.metrics.features import (
    Classifier,
    ClassifierFeatures,
    build_extractor,
    cache_dir,
    data_hash,
    load_or_train_classifier,
    weights_hash,
)
from raygan.metrics.prdc import (
    collapse_score,
    per_class_prdc_from_stats,
    prdc,
    real_class_stats,
)
from raygan.models.seam import GRID_PER_CLASS, GanModel, class_grid, sample_images

EVAL_BATCH = 250


@dataclass
class EvalResult:
    fid: float
    kid: float
    precision: float
    recall: float
    density: float
    coverage: float
    class_accuracy: float
    collapse: float
    color_fd: float
    per_class_coverage: dict[str, float] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """The headline metrics, flat, for reporting and logging."""
        out = asdict(self)
        per_class = out.pop("per_class_coverage")
        out.update({f"coverage/{name}": value for name, value in per_class.items()})
        return out


class PrecomputedFeatures(nn.Module):
    """Identity 'extractor' so torchmetrics' FID/KID accept features we already have."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def color_moments(images: torch.Tensor) -> torch.Tensor:
    """Each image's mean and standard deviation per channel, (N, 2C): which colours it shows
    and how far apart they are."""
    flat = images.float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def fid_over_features(dim: int) -> nn.Module:
    """torchmetrics' FID metric over features we compute ourselves, keeping the real side
    across resets; only rank 0 evaluates, so it must not sync states across the process
    group."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # costs seconds: see Evaluator

    return FrechetInceptionDistance(
        PrecomputedFeatures(dim), reset_real_features=False, sync_on_compute=False
    )


def distance_to_real(metric: nn.Module, fake_features: torch.Tensor) -> torch.Tensor:
    """A torchmetrics distance (FID, KID) that keeps its real side across resets, computed
    for these fake features alone."""
    metric.reset()
    metric.update(fake_features.double(), real=False)
    return metric.compute()


def cached_tensor(name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()`, run once and kept in the cache directory as `name`.safetensors; processes
    that need it at once wait for the first one's file."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"{name}.safetensors"
    with FileLock(str(file) + ".lock"):
        if file.exists():
            return load_file(file)["features"]
        tensor = compute()
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        save_file({"features": tensor.contiguous()}, tmp)
        os.replace(tmp, file)
        return tensor


@torch.no_grad()
def extract(net: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    net.to(device)
    return torch.cat(
        [
            net(images[i : i + EVAL_BATCH].to(device)).float().cpu()
            for i in range(0, len(images), EVAL_BATCH)
        ]
    )


class Evaluator:
    def __init__(
        self,
        real: LabeledImages,
        num_samples: int,
        extractor: str = "classifier",
        inception_weights: str | None = None,
        seed: int = 1234,
        device: torch.device | str = "cpu",
        k: int = 5,
        classifier_dir: Path | None = None,
    ) -> None:
        self.real = real
        self.num_samples = num_samples
        self.device = torch.device(device)
        self.k = k
        self.classifier: Classifier = load_or_train_classifier(real, classifier_dir)
        self.extractor = build_extractor(extractor, real, self.classifier, inception_weights)
        self.real_features = self._real_features(extractor)
        self.real_classes = real_class_stats(self.real_features, real.labels, real.num_classes, k)
        self.fake_labels = torch.arange(num_samples) % real.num_classes
        self.seed = seed
        # Imported here, not at the top: a fresh trial process should reach its first training
        # step without paying for torchmetrics (and the scipy it pulls in).
        from torchmetrics.image.kid import KernelInceptionDistance

        dim = self.real_features.shape[1]
        self.fid = fid_over_features(dim)
        self.fid.update(self.real_features.double(), real=True)
        real_colors = self._real_color_moments()
        self.color_fd = fid_over_features(real_colors.shape[1])
        self.color_fd.update(real_colors.double(), real=True)
        subset = min(100, len(real), num_samples)
        # Not synced across ranks either (see fid_over_features).
        with warnings.catch_warnings():  # its memory warning is about data sets far larger
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                PrecomputedFeatures(dim),
                subsets=50,
                subset_size=subset,
                reset_real_features=False,
                sync_on_compute=False,
            )
        self.kid.update(self.real_features.double(), real=True)

    def _real_features(self, extractor: str) -> torch.Tensor:
        """Real features, computed once per (data set, extractor) and cached on disk."""
        key = f"{extractor}-{weights_hash(self.extractor)}-{data_hash(self.real)}"

        def compute() -> torch.Tensor:
            images, _ = self.real.batch(torch.arange(len(self.real)))
            return extract(self.extractor, images, self.device)

        return cached_tensor(f"real-features-{key}", compute)

    def _real_color_moments(self) -> torch.Tensor:
        """Computed once per data set, in batches: a large set must not be decoded to floats
        all at once."""

        def compute() -> torch.Tensor:
            indices = torch.arange(len(self.real)).split(EVAL_BATCH)
            return torch.cat([color_moments(self.real.batch(i)[0]) for i in indices])

        return cached_tensor(f"real-colors-{data_hash(self.real)}", compute)

    @torch.no_grad()
    def _predict(self, fake: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Predicted classes. The classifier extractor's features are the classifier's own
        penultimate layer, so only its head runs again, not a second pass over the images."""
        if isinstance(self.extractor, ClassifierFeatures):
            return self.classifier.head(features.to(self.device)).argmax(dim=1).cpu()
        return extract(self.classifier, fake, self.device).argmax(dim=1)

    def sample_grid(self, model: GanModel, g: torch.nn.Module | None = None) -> torch.Tensor:
        """A (3, H, W) grid in [0, 1], one row per class: the export's samples.png, in
        TensorBoard."""
        from torchvision.utils import make_grid  # torchvision's import costs seconds

        return make_grid(class_grid(model, g=g), nrow=GRID_PER_CLASS, padding=1)

    def evaluate(self, model: GanModel, g: torch.nn.Module | None = None) -> EvalResult:
        """Scores of images from fixed noise, so every evaluation of every trial scores the
        same latent points; `g` replaces the model's generator (e.g. its EMA)."""
        fake = sample_images(model, self.fake_labels, self.seed, g)
        return self.score_images(fake, self.fake_labels)

    def score_images(self, fake: torch.Tensor, fake_labels: torch.Tensor) -> EvalResult:
        """Score any set of images in [-1, 1] with the classes they should show."""
        features = extract(self.extractor, fake, self.device)
        predicted = self._predict(fake, features)
        overall = prdc(self.real_features, features, self.k)
        per_class = per_class_prdc_from_stats(self.real_classes, features, fake_labels)
        return EvalResult(
            fid=float(distance_to_real(self.fid, features)),
            kid=float(distance_to_real(self.kid, features)[0]),
            precision=overall.precision,
            recall=overall.recall,
            density=overall.density,
            coverage=overall.coverage,
            class_accuracy=float((predicted == fake_labels).float().mean()),
            collapse=collapse_score(per_class, self.real.num_classes),
            color_fd=float(distance_to_real(self.color_fd, color_moments(fake.cpu()))),
            per_class_coverage={
                self.real.class_names[c]: m.coverage for c, m in sorted(per_class.items())
            },
        )


def objective(fid: float, collapse: float) -> float:
    """The search minimises FID penalised by collapse: FID * (1 + collapse).

    FID alone can reward a generator that renders a few modes very well; the penalty at most
    doubles FID for a fully collapsed generator and is ~3% for real data (collapse ~0.03)."""
    return fid * (1.0 + collapse)
