"""`adapter: torch`: the user's own PyTorch G and D, as they are.

The user names a factory (`pkg.module:callable` or `path/to/file.py:callable`) that returns
(G, D), and says only what cannot be read off the modules: the latent size and whether G and D
take class indices or one-hot vectors. Freeze groups default to the top-level children in
registration order; class-conditional tensors are found by shape (embeddings with one row per
class, linear layers with one input per class).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raygan.errors import ModelError
from raygan.models.seam import (
    ConditionalTensor,
    FreezeGroup,
    GanModel,
    encode_labels,
    export_program,
    flat_logits,
)


def load_factory(ref: str) -> Any:
    """`pkg.module:callable` or `path/to/file.py:callable` -> the callable."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise ModelError(
            f"model.factory {ref!r}: expected 'pkg.module:callable' or 'file.py:callable'"
        )
    try:
        module = (
            _import_file(Path(target))
            if target.endswith(".py")
            else importlib.import_module(target)
        )
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
        raise ModelError(
            f"model.factory {ref!r}: cannot import {target} ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model.factory {ref!r}: {target} has no callable named {attr!r}")
    return factory


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"model.factory: file not found: {path}")
    name = f"raygan_user_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def call_factory(spec: dict[str, Any], num_classes: int) -> tuple[nn.Module, nn.Module]:
    factory = load_factory(spec["factory"])
    kwargs = dict(spec.get("factory_args") or {})
    try:
        accepts_classes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_classes = False
    if accepts_classes:
        kwargs["num_classes"] = num_classes
    try:
        built = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise ModelError(
            f"model.factory {spec['factory']} failed: {type(e).__name__}: {e}"
        ) from None
    if (
        not isinstance(built, (tuple, list))
        or len(built) != 2
        or not all(isinstance(m, nn.Module) for m in built)
    ):
        raise ModelError(
            f"model.factory {spec['factory']} must return (G, D), two torch.nn.Modules; "
            f"got {_describe(built)}"
        )
    return built[0], built[1]


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {[type(v).__name__ for v in value]}"
    return type(value).__name__


class TorchGan(GanModel):
    adapter = "torch"

    def __init__(self, spec: dict[str, Any], num_classes: int) -> None:
        g, d = call_factory(spec, num_classes)
        super().__init__(g, d, int(spec["latent_dim"]), num_classes)
        self._spec = spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any], num_classes: int) -> TorchGan:
        return cls(spec, num_classes)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return encode_labels(labels, self.num_classes, self._spec.get("labels", "index"))

    def generate(self, z: torch.Tensor, labels: torch.Tensor, g: Any = None) -> torch.Tensor:
        return (self.g if g is None else g)(z, self.encode(labels))

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor, d: Any = None) -> torch.Tensor:
        return flat_logits((self.d if d is None else d)(x, self.encode(labels)))

    def freeze_groups(self, net: str) -> list[FreezeGroup]:
        module = self.net(net)
        order = self._spec.get("freeze_g" if net == "generator" else "freeze_d")
        if order:
            return [FreezeGroup(name, [_submodule(module, name, net)]) for name in order]
        conditional = {t.name for t in self.conditional_tensors() if t.net == net}
        return [
            FreezeGroup(name, [child])
            for name, child in module.named_children()
            if _holds_weights(child) and not _all_conditional(name, child, conditional)
        ]

    def conditional_tensors(self) -> list[ConditionalTensor]:
        found = []
        for net in ("generator", "discriminator"):
            for name, module in self.net(net).named_modules():
                found += [
                    ConditionalTensor(net, key, dim)
                    for key, dim in _class_slices(name, module, self.num_classes)
                ]
        return found

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def export(self, out: Path) -> list[str]:
        export_program(self, out / "generator.pt2")
        return ["generator.pt2"]


def _submodule(module: nn.Module, name: str, net: str) -> nn.Module:
    try:
        return module.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in module.named_children()]
        raise ModelError(
            f"model.freeze_{net[0]}: {name!r} is not a submodule of the {net}; "
            f"its children are {children}"
        ) from None


def _holds_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _all_conditional(prefix: str, module: nn.Module, conditional: set[str]) -> bool:
    """A child that only conditions on the class (an embedding, a Linear over one-hot labels,
    its bias too) is no freeze group: the conditioning must adapt to the new domain."""
    names = {f"{prefix}.{n}" for n, _ in module.named_parameters() if not n.endswith("bias")}
    return names <= conditional


def _class_slices(name: str, module: nn.Module, num_classes: int) -> list[tuple[str, int]]:
    """(state-dict key, class dim) of a module that holds one slice per class."""
    prefix = f"{name}." if name else ""
    if isinstance(module, nn.Embedding) and module.num_embeddings == num_classes:
        return [(f"{prefix}weight", 0)]
    if isinstance(module, nn.Linear) and module.in_features == num_classes:
        weight = "parametrizations.weight.original" if _parametrized(module) else "weight"
        return [(f"{prefix}{weight}", 1)]
    return []


def _parametrized(module: nn.Module) -> bool:
    return hasattr(module, "parametrizations") and "weight" in module.parametrizations
