"""One checkpoint format: a directory with safetensors weights and a JSON sidecar.

    CKPT/generator.safetensors      G's state_dict
    CKPT/discriminator.safetensors  D's state_dict
    CKPT/raygan.json                model spec (adapter, architecture), class names, state
    CKPT/optimizer.pt               optional; Adam states, loaded with weights_only=True

Writes go to a temporary sibling directory that is renamed into place, so a killed process
never leaves a half-written checkpoint at the destination. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from raygan.errors import CheckpointError
from raygan.fsio import fsync_dir, fsync_tree
from raygan.models import build
from raygan.models.builtin import ModelConfig
from raygan.models.seam import GanModel

FORMAT = "raygan-checkpoint"
SIDECAR = "raygan.json"
G_FILE = "generator.safetensors"
D_FILE = "discriminator.safetensors"
OPTIM_FILE = "optimizer.pt"


@dataclass
class Checkpoint:
    spec: dict[str, Any]  # GanModel.spec(): rebuilds the modules through the seam's registry
    class_names: list[str]
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    state: dict[str, Any] = field(default_factory=dict)  # step, hyperparameters, metrics
    optimizer: dict[str, Any] | None = None

    def build(self) -> GanModel:
        """The model with these weights; a mismatch names the tensor and both shapes."""
        model = build(self.spec, len(self.class_names))
        model.load_state_dicts(self.generator, self.discriminator, "checkpoint")
        return model

    @classmethod
    def of(cls, model: GanModel, class_names: list[str], state: dict[str, Any]) -> Checkpoint:
        g, d = model.state_dicts()
        return cls(model.spec(), list(class_names), g, d, state)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Atomically write `ckpt` to the directory `path` (replacing any older one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(_contiguous(ckpt.generator), tmp / G_FILE)
        save_file(_contiguous(ckpt.discriminator), tmp / D_FILE)
        if ckpt.optimizer is not None:
            torch.save(ckpt.optimizer, tmp / OPTIM_FILE)
        sidecar = {
            "format": FORMAT,
            "version": 1,
            "model": ckpt.spec,
            "class_names": list(ckpt.class_names),
            "state": ckpt.state,
        }
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=float))
        _make_readable(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _make_readable(directory: Path) -> None:
    """mkdtemp and safetensors create owner-only files; checkpoints are shared artefacts."""
    directory.chmod(0o755)
    for file in directory.iterdir():
        file.chmod(0o644)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` stays whole until the new one is in place.

    Durable across a crash: `src`'s files reach the disk before the rename can, and the
    parent directory is synced after it, so `dst` is never a name for missing data."""
    fsync_tree(src)
    if not dst.exists():
        os.replace(src, dst)
        fsync_dir(dst.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    os.replace(dst, old / "x")
    os.replace(src, dst)
    fsync_dir(dst.parent)  # before the old copy goes: a crash must leave one of them
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, with_optimizer: bool = False) -> Checkpoint:
    """Load a raygan checkpoint directory, or a plain PyTorch state_dict file (.pt/.pth)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        return load_state_dict_file(path)
    sidecar = _read_sidecar(path)
    spec = sidecar["model"]
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path / SIDECAR}: field 'model' must be a mapping")
    spec = {"adapter": "raygan", **spec}  # sidecars before the model seam had no adapter
    ckpt = Checkpoint(
        spec=spec,
        class_names=list(sidecar["class_names"]),
        generator=_read_safetensors(path / G_FILE),
        discriminator=_read_safetensors(path / D_FILE),
        state=sidecar.get("state", {}),
    )
    declared = spec.get("num_classes", len(ckpt.class_names))
    if len(ckpt.class_names) != declared:
        raise CheckpointError(
            f"{path / SIDECAR}: {len(ckpt.class_names)} class names for a model of "
            f"{declared} classes"
        )
    if with_optimizer and (path / OPTIM_FILE).exists():
        ckpt.optimizer = _torch_load(path / OPTIM_FILE)
    return ckpt


def _read_sidecar(path: Path) -> dict[str, Any]:
    file = path / SIDECAR
    if not file.exists():
        raise CheckpointError(f"{path} is not a raygan checkpoint: {SIDECAR} is missing")
    try:
        sidecar = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a {FORMAT} sidecar")
    for key in ("model", "class_names"):
        if key not in sidecar:
            raise CheckpointError(f"{file}: field '{key}' is missing")
    return sidecar


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.exists():
        raise CheckpointError(f"checkpoint file missing: {file}")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors file ({e})") from None


def _torch_load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad or unsafe files
        raise CheckpointError(
            f"{file}: cannot be loaded safely ({type(e).__name__}: {e})"
        ) from None


def load_state_dict_file(file: Path) -> Checkpoint:
    """A plain `torch.save({"generator": G.state_dict(), "discriminator": D.state_dict()})`.

    The architecture is read off the tensor shapes; class names are unknown, so they are
    numbered and the data set's names replace them once the class count is checked.
    """
    blob = _torch_load(file)
    if not isinstance(blob, dict) or not {"generator", "discriminator"} <= set(blob):
        raise CheckpointError(
            f"{file}: expected a dict with 'generator' and 'discriminator' state_dicts"
        )
    model = infer_model_config(blob["generator"], blob["discriminator"], file)
    return Checkpoint(
        spec={"adapter": "raygan", **model.to_dict()},
        class_names=[str(i) for i in range(model.num_classes)],
        generator=blob["generator"],
        discriminator=blob["discriminator"],
        state={"source": str(file), "unnamed_classes": True},
    )


def infer_model_config(g: dict, d: dict, file: Path) -> ModelConfig:
    try:
        _, num_classes = d["class_projection.parametrizations.weight.original"].shape
        base = g["blocks.input.linear.weight"]
        channels = g["blocks.to_rgb.0.weight"].shape[1]
        stages = sum(1 for k in g if k.startswith("blocks.up") and k.endswith(".1.weight"))
        return ModelConfig(
            num_classes=int(num_classes),
            resolution=4 * 2**stages,
            channels=int(channels),
            latent_dim=int(base.shape[1] - num_classes),
            class_norm=any(k.endswith(".class_gain") for k in g),
            latent_norm=any(k.endswith(".latent_gain") for k in g),
        )
    except (KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a raygan G/D state_dict ({e})") from None


StateDicts = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def read_weights(path: Path) -> StateDicts:
    """G and D state dicts of any model, without unpickling code: a directory with
    generator/discriminator `.safetensors` (or `.pt` state_dict files), or one `.pt` file
    holding {"generator": ..., "discriminator": ...}."""
    if path.is_file():
        blob = _torch_load(path)
        if not isinstance(blob, dict) or not {"generator", "discriminator"} <= set(blob):
            raise CheckpointError(
                f"{path}: expected a dict with 'generator' and 'discriminator' state_dicts"
            )
        return _tensors(blob["generator"], path), _tensors(blob["discriminator"], path)
    for suffix, read in ((".safetensors", _read_safetensors), (".pt", _torch_load)):
        g, d = path / f"generator{suffix}", path / f"discriminator{suffix}"
        if g.exists() and d.exists():
            return _tensors(read(g), g), _tensors(read(d), d)
    raise CheckpointError(
        f"{path}: expected generator.safetensors and discriminator.safetensors "
        "(or generator.pt and discriminator.pt) in this directory"
    )


def _tensors(state: Any, origin: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{origin}: not a state_dict of tensors")
    return state
