"""The embedded demo: a base model pretrained on the demo source domain.

The package ships one (made by `raygan pretrain` with DEMO_PRETRAIN below) so the demo starts
at once; if it is missing, it is built on first use and cached, printing its progress.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

from raygan.checkpoint import Checkpoint, load_checkpoint
from raygan.config import PretrainConfig
from raygan.metrics.features import cache_dir

log = logging.getLogger(__name__)

DEMO_BASE = "demo"
# The shipped base model is `raygan pretrain --set class_norm=true --set latent_norm=true
# --export raygan/assets/demo-base` (bench/README.md §7).
DEMO_PRETRAIN = PretrainConfig(class_norm=True, latent_norm=True)


def shipped_base() -> Path:
    return Path(str(resources.files("raygan") / "assets" / "demo-base"))


def load_base(spec: str) -> Checkpoint:
    """`demo` or a path to a checkpoint directory / state_dict file."""
    if spec != DEMO_BASE:
        return load_checkpoint(spec)
    cached = cache_dir() / f"demo-base-{recipe_digest()}"
    for candidate in (shipped_base(), cached):
        if (candidate / "raygan.json").exists():
            return load_checkpoint(candidate)
    return load_checkpoint(build_demo_base(cached))


def recipe_digest() -> str:
    """Names the cached fallback base after DEMO_PRETRAIN, so a base built by an older recipe
    is not taken for this one's."""
    recipe = json.dumps(DEMO_PRETRAIN.model_dump(), sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def build_demo_base(out: Path) -> Path:
    from raygan.pretrain import pretrain

    log.warning("no demo base model found; pretraining one on demo:source (once) into %s", out)
    return pretrain(
        DEMO_PRETRAIN.model_copy(update={"output": str(out.parent / f".{out.name}-run")}),
        export_to=out,
    )
