"""Feature extractors for FID and the mode-collapse metrics: a registry of name -> builder.

`classifier` (the offline default) is a small CNN trained on the real labeled data and cached
on disk under a hash of that data. `inception` is the standard FID Inception-v3; its weights
are never downloaded: they come from a path or the cache, or the run stops with a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn

from raygan.data import LabeledImages, to_uint8
from raygan.errors import ConfigError

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
CLASSIFIER_VERSION = "v1"  # bump when the classifier's architecture or recipe changes


def cache_dir() -> Path:
    """Where expensive invariants live; shared by every trial on a node."""
    return Path(os.environ.get("RAYGAN_CACHE", Path.home() / ".cache" / "raygan"))


def weights_hash(net: nn.Module) -> str:
    """A hash of a network's weights: cached features are only valid for the same weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_hash(data: LabeledImages) -> str:
    h = hashlib.sha256()
    h.update(data.images.numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    h.update("\0".join(data.class_names).encode())
    return h.hexdigest()[:16]


class Classifier(nn.Module):
    """A small CNN; its penultimate layer is the feature space, its logits judge class."""

    feature_dim = 128

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(128 * 16, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Work at 32x32 whatever the model resolution: class and style survive, cost drops 4x+.
        return self.body(F.interpolate(x, size=32, mode="area"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(data: LabeledImages, steps: int = 400, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = Classifier(data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = data.batch(torch.randint(len(data), (64,), generator=gen))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def load_or_train_classifier(data: LabeledImages, directory: Path | None = None) -> Classifier:
    """Train once per data set; later trials (and processes) load the cached weights.

    A search passes its experiment directory, so every trial on every node scores in the
    feature space of one classifier, trained once by the driver."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"classifier-{CLASSIFIER_VERSION}-{data_hash(data)}.safetensors"
    with FileLock(str(file) + ".lock"):
        net = Classifier(data.num_classes)
        if file.exists():
            net.load_state_dict(load_file(file))
            return net.eval()
        log.info("training the evaluation classifier on %s (once; cached at %s)", data.source, file)
        net = train_classifier(data)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        save_file(net.state_dict(), tmp)
        os.replace(tmp, file)
    return net


class ClassifierFeatures(nn.Module):
    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features (2048-d) via torch-fidelity, on images in [-1, 1]."""

    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        with tempfile.TemporaryDirectory() as tmp:
            # torch-fidelity unpickles its path with weights_only=False: hand it only a file we
            # wrote ourselves from tensors that were loaded safely.
            safe_copy = Path(tmp) / "inception.pt"
            torch.save(load_inception_state(weights), safe_copy)
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=str(safe_copy),
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8(images)).reshape(len(images), -1)


def inception_weights_path(explicit: str | None = None) -> Path:
    candidates = [
        explicit,
        os.environ.get("RAYGAN_INCEPTION_WEIGHTS"),
        cache_dir() / INCEPTION_FILE,
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        f"Inception-v3 FID weights not found (looked at {[str(c) for c in candidates if c]}); "
        f"put {INCEPTION_FILE} there, set RAYGAN_INCEPTION_WEIGHTS, or use "
        "feature_extractor: classifier"
    )


def load_inception_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for unsafe or corrupt files
        raise ConfigError(f"{path}: cannot load Inception weights safely ({e})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected an Inception-v3 state_dict")
    return state


FeatureBuilder = Callable[[LabeledImages, Classifier, str | None], nn.Module]

EXTRACTORS: dict[str, FeatureBuilder] = {
    "classifier": lambda data, classifier, weights: ClassifierFeatures(classifier),
    "inception": lambda data, classifier, weights: InceptionFeatures(
        inception_weights_path(weights)
    ),
}


def build_extractor(
    name: str, data: LabeledImages, classifier: Classifier, weights: str | None = None
) -> nn.Module:
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature_extractor {name!r}; choose from {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](data, classifier, weights).eval()
