"""`adapter: keras`: a Keras 3 CGAN (`generator.keras`, `discriminator.keras`) on Keras's
torch backend, where a Keras model is a `torch.nn.Module` that trains under PyTorch optimizers.

Models load with `safe_mode=True`, so a file that needs code to deserialise is refused. Images
are NHWC in Keras and NCHW above the seam. The freeze groups are the weight-holding layers in
order; a frozen layer is set `trainable = False`, which in Keras also runs its BatchNormalization
in inference mode. Export writes the fine-tuned models back as `.keras` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raygan.errors import ModelError
from raygan.models.seam import (
    NETS,
    ConditionalTensor,
    FreezeGroup,
    GanModel,
    encode_labels,
    flat_logits,
    load_matching,
)

KERAS_FILES = {"generator": "generator.keras", "discriminator": "discriminator.keras"}
# A random layer's (Dropout's) generator state: RNG, not weights, and Keras names it by a
# per-process counter, so its key differs between two loads of the same file.
RNG_STATE = "seed_generator_state"


def weights_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """A Keras model's state dict without RNG state, so two loads of one file match."""
    return {k: v for k, v in net.state_dict().items() if not k.endswith(RNG_STATE)}


def import_keras() -> Any:
    """Keras on the torch backend; a missing or wrongly configured Keras is one clear line."""
    backend = os.environ.setdefault("KERAS_BACKEND", "torch")
    if backend != "torch":
        raise ModelError(f"adapter keras needs KERAS_BACKEND=torch, but it is set to {backend!r}")
    try:
        import keras
    except ImportError:
        raise ModelError("adapter keras needs Keras 3: pip install 'raygan[keras]'") from None
    if keras.backend.backend() != "torch":
        raise ModelError(
            f"Keras was imported with the {keras.backend.backend()!r} backend before raygan "
            "could select torch: set KERAS_BACKEND=torch"
        )
    return keras


def load_keras_model(path: Path) -> nn.Module:
    keras = import_keras()
    if not path.is_file():
        raise ModelError(f"Keras model not found: {path}")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise ModelError(
                f"{path}: needs unsafe deserialisation (a Lambda layer or custom code), which "
                f"raygan refuses; rebuild it without Lambda layers ({first[:200]})"
            ) from None
        raise ModelError(f"{path}: cannot be loaded by Keras ({first[:300]})") from None
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a corrupt file
        raise ModelError(f"{path}: cannot be loaded by Keras ({type(e).__name__}: {e})") from None


def label_width(g: Any) -> int:
    """The size of a Keras G's label input (its second input): its class count when one-hot."""
    return int(g.inputs[1].shape[-1])


def check_generator_inputs(g: Any, spec: dict[str, Any], num_classes: int, path: Path) -> None:
    """G is called as G([noise, label]); a model built otherwise fails here, in words."""
    inputs = list(getattr(g, "inputs", None) or [])
    if len(inputs) != 2:
        raise ModelError(f"{path}: G must take two inputs [noise, label], got {len(inputs)}")
    if inputs[0].shape[-1] != int(spec["latent_dim"]):
        raise ModelError(
            f"model.latent_dim is {spec['latent_dim']} but {path} takes noise of size "
            f"{inputs[0].shape[-1]}"
        )
    if spec.get("labels", "onehot") == "onehot" and label_width(g) != num_classes:
        raise ModelError(
            f"{path} takes one-hot labels of {label_width(g)} classes but the data has "
            f"{num_classes}: adapter keras keeps the base model's classes"
        )


class KerasGan(GanModel):
    adapter = "keras"

    def __init__(self, spec: dict[str, Any], num_classes: int) -> None:
        base = Path(spec["path"])
        g = load_keras_model(base / KERAS_FILES["generator"])
        d = load_keras_model(base / KERAS_FILES["discriminator"])
        check_generator_inputs(g, spec, num_classes, base / KERAS_FILES["generator"])
        super().__init__(g, d, int(spec["latent_dim"]), num_classes)
        self._spec = spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any], num_classes: int) -> KerasGan:
        return cls(spec, num_classes)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return encode_labels(labels, self.num_classes, self._spec.get("labels", "onehot"))

    def generate(self, z: torch.Tensor, labels: torch.Tensor, g: Any = None) -> torch.Tensor:
        net = self.g if g is None else g
        images = net([z, self.encode(labels)], training=_training(net))
        return images.permute(0, 3, 1, 2)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor, d: Any = None) -> torch.Tensor:
        net = self.d if d is None else d
        return flat_logits(
            net([x.permute(0, 2, 3, 1), self.encode(labels)], training=_training(net))
        )

    def freeze_groups(self, net: str) -> list[FreezeGroup]:
        # A layer that reads the label directly (the tutorial D's Dense(one-hot) label map) is
        # the conditioning, which must adapt to the new domain: it is no group and never freezes.
        return [
            FreezeGroup(layer.name, [layer])
            for layer in self.net(net).layers
            if layer.weights and self._class_weight(layer) is None
        ]

    def conditional_tensors(self) -> list[ConditionalTensor]:
        return [
            ConditionalTensor(net, f"_torch_params.{weight.path}", 0)
            for net in NETS
            for layer in self.net(net).layers
            if (weight := self._class_weight(layer)) is not None
        ]

    def _class_weight(self, layer: Any) -> Any:
        """The weight with one row per class of a layer fed by the label input, or None."""
        keras = import_keras()
        if self._spec.get("labels", "onehot") == "onehot":
            weight = layer.kernel if isinstance(layer, keras.layers.Dense) else None
        else:
            weight = layer.embeddings if isinstance(layer, keras.layers.Embedding) else None
        return weight if weight is not None and weight.shape[0] == self.num_classes else None

    def freeze_module(self, module: nn.Module) -> None:
        module.trainable = False  # also puts Keras BatchNormalization in inference mode

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return weights_of(self.g), weights_of(self.d)

    def load_state_dicts(
        self, g_state: dict[str, torch.Tensor], d_state: dict[str, torch.Tensor], origin: str
    ) -> None:
        for name, state in (("generator", g_state), ("discriminator", d_state)):
            net = self.net(name)
            own_rng = {k: v for k, v in net.state_dict().items() if k.endswith(RNG_STATE)}
            weights = {k: v for k, v in state.items() if not k.endswith(RNG_STATE)}
            load_matching(net, {**weights, **own_rng}, f"{origin} {name}")

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def export(self, out: Path) -> list[str]:
        for net, file in KERAS_FILES.items():
            self.net(net).save(out / file)
        return list(KERAS_FILES.values())


def _training(net: nn.Module) -> bool:
    """Keras reads training mode from the call, not from torch's flag; DDP forwards both."""
    return bool(getattr(net, "module", net).training)
