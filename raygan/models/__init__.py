"""The model seam's registry: adapter name -> the class that puts such a model behind the seam.

Adding a kind of model is adding one entry here (and a `model:` spec in `raygan.config`)."""

from __future__ import annotations

from typing import Any

from raygan.errors import CheckpointError
from raygan.models.builtin import BuiltinGan
from raygan.models.keras_user import KerasGan
from raygan.models.seam import GanModel
from raygan.models.torch_user import TorchGan

ADAPTERS: dict[str, type[GanModel]] = {"raygan": BuiltinGan, "torch": TorchGan, "keras": KerasGan}


def build(spec: dict[str, Any], num_classes: int) -> GanModel:
    """Fresh G and D for `spec` (as `GanModel.spec()` wrote it) with `num_classes` classes."""
    adapter = spec.get("adapter", "raygan")
    if adapter not in ADAPTERS:
        raise CheckpointError(f"unknown model adapter {adapter!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[adapter].from_spec(spec, num_classes)
