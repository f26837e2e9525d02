"""The model seam: everything above it (trial loop, checkpoints, metrics, export, search) talks to
a `GanModel`, never to a concrete architecture.

A `GanModel` holds the user's G and D modules as they are and adapts their calling convention
to one contract: integer class labels in, G(z, y) -> (N, 3, R, R) images in [-1, 1],
D(x, y) -> (N,) logits. An adapter (raygan's built-in models, a user's PyTorch modules, a
Keras CGAN) subclasses it and says how to call its modules, which groups of layers freeze in
which order, and which tensors hold one slice per class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from raygan.errors import CheckpointError, ConfigError

NETS = ("generator", "discriminator")
SAMPLE_BATCH = 250
GRID_PER_CLASS = 8  # images per class row in TensorBoard grids and samples.png


@dataclass(frozen=True)
class ConditionalTensor:
    """A state-dict tensor that holds one slice per class: class c is `start + c` along `dim`."""

    net: str  # "generator" or "discriminator"
    name: str
    dim: int
    start: int = 0


@dataclass
class FreezeGroup:
    """Layers that freeze together; G's groups are counted from the latent, D's from the image."""

    name: str
    modules: list[nn.Module]

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules:
            yield from module.parameters()

    def size(self) -> int:
        return sum(p.numel() for p in self.parameters())


class GanModel(ABC):
    """A pretrained conditional GAN behind raygan's one contract (see the module docstring)."""

    adapter: ClassVar[str]

    def __init__(self, g: nn.Module, d: nn.Module, latent_dim: int, num_classes: int) -> None:
        self.g, self.d = g, d
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.frozen: dict[str, list[str]] = {"generator": [], "discriminator": []}
        self._frozen_modules: list[nn.Module] = []

    # ---- what an adapter provides ----------------------------------------------------------

    @abstractmethod
    def generate(self, z: torch.Tensor, labels: torch.Tensor, g: Any = None) -> torch.Tensor:
        """(N, 3, R, R) images in [-1, 1]; `g` replaces the generator (a DDP wrapper, an EMA)."""

    @abstractmethod
    def discriminate(self, x: torch.Tensor, labels: torch.Tensor, d: Any = None) -> torch.Tensor:
        """(N,) logits for NCHW images in [-1, 1]; `d` replaces the discriminator (DDP)."""

    @abstractmethod
    def freeze_groups(self, net: str) -> list[FreezeGroup]:
        """The ordered freeze groups of "generator" or "discriminator"."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON that rebuilds these modules (without weights) through `raygan.models.build`."""

    @abstractmethod
    def export(self, out: Path) -> list[str]:
        """Write serving artefacts into `out`; returns their file names."""

    def conditional_tensors(self) -> list[ConditionalTensor]:
        return []

    def with_class_norm(self) -> GanModel:
        """This model with a per-class scale and shift, zero at the start, on G's normalisation
        layers (`class_norm`). Only an architecture raygan owns can grow new layers."""
        raise ConfigError(
            f"class_norm: only the built-in model (adapter: raygan) has it, not adapter "
            f"{self.adapter}; turn class_norm off"
        )

    def freeze_module(self, module: nn.Module) -> None:
        module.requires_grad_(False)

    # ---- shared behaviour --------------------------------------------------------------------

    def net(self, name: str) -> nn.Module:
        return self.g if name == "generator" else self.d

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    def max_freeze(self, net: str) -> int:
        """Deepest legal freeze: every group if some weights lie outside all groups (D's head),
        else all but the last, so something always trains."""
        groups = self.freeze_groups(net)
        grouped = {id(p) for group in groups for p in group.parameters()}
        outside = any(id(p) not in grouped for p in self.net(net).parameters())
        return len(groups) if outside else len(groups) - 1

    def freeze(self, depth_g: int, depth_d: int) -> None:
        """Freeze the first groups of G and D. Frozen weights get no gradient (so no optimizer
        state) and their layers stay in eval mode, so normalisation statistics stay too."""
        for net, depth, field in (
            ("generator", depth_g, "freeze_g"),
            ("discriminator", depth_d, "freeze_d"),
        ):
            limit = self.max_freeze(net)
            if not 0 <= depth <= limit:
                raise ConfigError(f"{field} must be in [0, {limit}] for this model, got {depth}")
            for group in self.freeze_groups(net)[:depth]:
                for module in group.modules:
                    self.freeze_module(module)
                    self._frozen_modules.append(module)
                self.frozen[net].append(group.name)
        self.train(self.g.training)

    def train(self, mode: bool = True) -> GanModel:
        self.g.train(mode)
        self.d.train(mode)
        for module in self._frozen_modules:
            module.train(False)
        return self

    def to(self, device: torch.device | str) -> GanModel:
        self.g.to(device)
        self.d.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.g.parameters()).device

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.g.state_dict(), self.d.state_dict()

    def load_state_dicts(
        self, g_state: dict[str, torch.Tensor], d_state: dict[str, torch.Tensor], origin: str
    ) -> None:
        load_matching(self.g, g_state, f"{origin} generator")
        load_matching(self.d, d_state, f"{origin} discriminator")


def encode_labels(labels: torch.Tensor, num_classes: int, kind: str) -> torch.Tensor:
    """Class indices as a user's model takes them: `index` as they are, `onehot` as rows."""
    return torch.nn.functional.one_hot(labels, num_classes).float() if kind == "onehot" else labels


def flat_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) logits as (N,); any other shape is left for the contract check to name."""
    return logits.reshape(len(logits)) if logits.dim() == 2 and logits.shape[1] == 1 else logits


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict, but a mismatch names the tensor and both sides."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} weights do not match the modules: missing in the weights {missing[:3]}, "
            f"not in the modules {unexpected[:3]}"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(
                f"{what} tensor {name} has shape {tuple(state[name].shape)} in the weights "
                f"but {tuple(tensor.shape)} in the model"
            )
    net.load_state_dict(state)


@torch.no_grad()
def sample_images(model: GanModel, labels: torch.Tensor, seed: int, g: Any = None) -> torch.Tensor:
    """Images for `labels` from seeded noise, in eval mode, on the CPU in [-1, 1]: every
    evaluation, TensorBoard grid and export draws through here, so they show the same noise."""
    noise = model.sample_latent(len(labels), torch.Generator().manual_seed(seed))
    device = model.device
    was_training = model.g.training
    model.train(False)
    net = g if g is not None else model.g
    net_was_training = net.training
    net.train(False)
    try:
        return torch.cat(
            [
                model.generate(
                    noise[i : i + SAMPLE_BATCH].to(device),
                    labels[i : i + SAMPLE_BATCH].to(device),
                    g,
                )
                .float()
                .cpu()
                for i in range(0, len(labels), SAMPLE_BATCH)
            ]
        )
    finally:
        net.train(net_was_training)
        model.train(was_training)


def class_grid(model: GanModel, seed: int = 0, g: Any = None) -> torch.Tensor:
    """A row of GRID_PER_CLASS images per class, as one (C * GRID_PER_CLASS, 3, R, R) batch
    in [0, 1]; `make_grid(..., nrow=GRID_PER_CLASS)` lays it out."""
    labels = torch.arange(model.num_classes).repeat_interleave(GRID_PER_CLASS)
    return sample_images(model, labels, seed, g).add(1).div(2).clamp(0, 1)


class ServingGenerator(nn.Module):
    """G(z, class index) -> images, self-contained for torch.export."""

    def __init__(self, model: GanModel) -> None:
        super().__init__()
        self.inner = model.g
        self._model = [model]  # a list, so nn.Module does not register it twice

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._model[0].generate(z, labels, self.inner)


def export_program(model: GanModel, out: Path) -> None:
    """A torch.export program of G(z, class index) with a dynamic batch size, for serving
    without raygan (TorchScript is deprecated in current PyTorch)."""
    model.train(False)
    serving = ServingGenerator(model).eval()
    example = (torch.randn(2, model.latent_dim), torch.arange(2) % model.num_classes)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(serving, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, out)
