"""The pretrained model a run starts from: read the user's weights through their adapter, match
its classes to the target data set's (`class_map`), and prove the G -> D contract.

The result is a `Checkpoint` already shaped for the target classes: class-conditional tensors
carry the mapped classes' slices from the pretrained model and fresh slices for new classes;
every other tensor is the pretrained one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raygan.checkpoint import SIDECAR, Checkpoint, load_checkpoint, read_weights
from raygan.config import KerasModelSpec, ModelSpec, RayganModelSpec, TorchModelSpec
from raygan.data import LabeledImages, load_dataset
from raygan.errors import CheckpointError, ModelError
from raygan.metrics.prdc import min_real_per_class
from raygan.models import build
from raygan.models.keras_user import KERAS_FILES, label_width, load_keras_model, weights_of
from raygan.models.seam import ConditionalTensor, GanModel

log = logging.getLogger(__name__)
EVAL_NEIGHBOURS = 5  # k of precision/recall/density/coverage (Naeem et al. 2020)
INIT_SEED = 0  # fresh class slices must be identical in every trial process and DDP rank


@dataclass
class Pretrained:
    spec: dict[str, Any]
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    class_names: list[str] | None  # None: the weights do not name their classes
    num_classes: int | None  # None: read off the class-conditional tensors


def read_pretrained(model: ModelSpec, base: str) -> Pretrained:
    from raygan.demo import DEMO_BASE, load_base

    path = Path(base).expanduser()
    if base != DEMO_BASE and not path.exists():
        raise CheckpointError(f"base not found: {path}")
    if isinstance(model, RayganModelSpec):
        ckpt = load_base(base)
        names = None if ckpt.state.get("unnamed_classes") else ckpt.class_names
        return Pretrained(
            ckpt.spec, ckpt.generator, ckpt.discriminator, names, len(ckpt.class_names)
        )
    if isinstance(model, KerasModelSpec):
        return _read_keras(model, path.resolve())
    return _read_torch(model, path.resolve())


def _read_torch(model: TorchModelSpec, path: Path) -> Pretrained:
    spec = model.model_dump(exclude={"class_map"})
    target, _, attr = spec["factory"].rpartition(":")
    if target.endswith(".py"):  # trial processes run elsewhere: pin the file
        spec["factory"] = f"{Path(target).resolve()}:{attr}"
    g, d = read_weights(path)
    names = _sidecar_class_names(path)
    return Pretrained(spec, g, d, names, len(names) if names else None)


def _read_keras(model: KerasModelSpec, path: Path) -> Pretrained:
    missing = [f for f in KERAS_FILES.values() if not (path / f).is_file()]
    if missing:
        raise ModelError(f"base {path}: adapter keras expects {missing[0]} in this directory")
    spec = {**model.model_dump(exclude={"class_map"}), "path": str(path)}
    g = load_keras_model(path / KERAS_FILES["generator"])
    d = load_keras_model(path / KERAS_FILES["discriminator"])
    classes = label_width(g) if model.labels == "onehot" else None
    return Pretrained(spec, weights_of(g), weights_of(d), None, classes)


def _sidecar_class_names(path: Path) -> list[str] | None:
    if path.is_dir() and (path / SIDECAR).exists():
        return load_checkpoint(path).class_names
    return None


def model_resolution(pre: Pretrained) -> int:
    """The image size G draws, so the data can be loaded at it."""
    if "resolution" in pre.spec:
        return int(pre.spec["resolution"])
    probe = build(pre.spec, pre.num_classes or 2)
    images = generate_probe(probe)
    check_image_shape(images)
    return int(images.shape[-1])


def generate_probe(model: GanModel, n: int = 2) -> torch.Tensor:
    z = model.sample_latent(n, torch.Generator().manual_seed(0))
    labels = torch.arange(n) % model.num_classes
    model.train(False)
    try:
        with torch.no_grad():
            return model.generate(z, labels)
    except Exception as e:  # noqa: BLE001 - the user's G may raise anything
        raise ModelError(
            f"G failed on z of shape {tuple(z.shape)} (model.latent_dim {model.latent_dim}) "
            f"and {n} labels: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None


def check_image_shape(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ModelError(
            f"G must return (N, 3, R, R) images (NHWC for Keras), got shape {tuple(images.shape)}"
        )


def check_contract(model: GanModel) -> tuple[int, ...]:
    """One G -> D pass on random input; a broken contract is one ModelError line."""
    images = generate_probe(model, 4)
    check_image_shape(images)
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise ModelError(
            f"G's output must lie in [-1, 1] (tanh), got values in [{low:.3g}, {high:.3g}]"
        )
    labels = torch.arange(4) % model.num_classes
    try:
        with torch.no_grad():
            logits = model.discriminate(images, labels)
    except Exception as e:  # noqa: BLE001 - the user's D may raise anything
        raise ModelError(
            f"D failed on G's images of shape {tuple(images.shape)}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if logits.shape != (4,):
        raise ModelError(f"D must return (N,) or (N, 1) logits, got shape {tuple(logits.shape)}")
    return tuple(images.shape[1:])


# ---- matching classes ------------------------------------------------------------------------


def class_mapping(
    pre: Pretrained, source_count: int, target: list[str], class_map: dict[str, Any] | None
) -> dict[int, int]:
    """target class index -> pretrained class index; unmapped target classes start fresh."""
    if class_map is not None:
        return _explicit_mapping(pre, source_count, target, class_map)
    names = pre.class_names
    if names and set(target) <= set(names):
        if target != names:
            log.info("classes matched by name to the base model's: %s", target)
        return {t: names.index(name) for t, name in enumerate(target)}
    if source_count == len(target):
        return {t: t for t in range(len(target))}
    named = f" {names[:5]}" if names else " (unnamed)"
    raise CheckpointError(
        f"the base model has {source_count} classes{named} but the data set has "
        f"{len(target)} {target[:5]}: set model.class_map (target class: base class) to map "
        "them; unmapped classes start fresh"
    )


def _explicit_mapping(
    pre: Pretrained, source_count: int, target: list[str], class_map: dict[str, Any]
) -> dict[int, int]:
    unknown = sorted(set(class_map) - set(target))
    if unknown:
        raise CheckpointError(
            f"model.class_map: {unknown[0]!r} is not a class of the data {target}"
        )
    mapping = {}
    for name, source in class_map.items():
        mapping[target.index(name)] = _source_index(pre, source_count, name, source)
    return mapping


def _source_index(pre: Pretrained, count: int, name: str, source: Any) -> int:
    if isinstance(source, str) and pre.class_names and source in pre.class_names:
        return pre.class_names.index(source)
    if isinstance(source, int) and 0 <= source < count:
        return source
    known = pre.class_names or list(range(count))
    raise CheckpointError(f"model.class_map.{name}: {source!r} is not a base class; known: {known}")


def source_class_count(pre: Pretrained, fresh: GanModel) -> int:
    if pre.num_classes is not None:
        return pre.num_classes
    weights = {"generator": pre.generator, "discriminator": pre.discriminator}
    for tensor in fresh.conditional_tensors():
        stored = weights[tensor.net].get(tensor.name)
        if stored is not None and stored.dim() > tensor.dim:
            # The class slice ends its dim (as `_mapped` assumes): everything before `start`.
            return int(stored.shape[tensor.dim]) - tensor.start
    return fresh.num_classes


def merge_weights(
    pre: Pretrained, fresh: GanModel, mapping: dict[int, int], source_count: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fresh model's state dicts with pretrained tensors poured in, class slices mapped."""
    identity = source_count == fresh.num_classes and all(s == t for t, s in mapping.items())
    if identity and len(mapping) == fresh.num_classes:
        return pre.generator, pre.discriminator
    conditional = fresh.conditional_tensors()
    if not conditional:
        raise CheckpointError(
            f"model.class_map needs the model's class-conditional tensors, and adapter "
            f"{fresh.adapter} found none: keep the base model's {source_count} classes"
        )
    merged = []
    for net, stored in (("generator", pre.generator), ("discriminator", pre.discriminator)):
        by_name = {t.name: t for t in conditional if t.net == net}
        state = fresh.net(net).state_dict()
        for name, tensor in state.items():
            if name not in stored:
                continue  # load_matching names it
            state[name] = (
                _mapped(tensor, stored[name], by_name[name], mapping, fresh.num_classes)
                if name in by_name
                else stored[name]
            )
        merged.append(state)
    return merged[0], merged[1]


def _mapped(
    fresh: torch.Tensor,
    stored: torch.Tensor,
    where: ConditionalTensor,
    mapping: dict[int, int],
    count: int,
) -> torch.Tensor:
    out = fresh.clone()
    dim, start = where.dim, where.start
    out.narrow(dim, 0, start).copy_(stored.narrow(dim, 0, start))  # e.g. the latent columns
    for target, source in mapping.items():
        out.select(dim, start + target).copy_(stored.select(dim, start + source))
    return out


# ---- the entry point ---------------------------------------------------------------------------


def load_base_and_data(
    model: ModelSpec, base: str, data_spec: str, skip_corrupt: bool
) -> tuple[Checkpoint, LabeledImages]:
    """The pretrained model shaped for the data set's classes, and the data at its resolution."""
    pre = read_pretrained(model, base)
    data = load_dataset(data_spec, model_resolution(pre), skip_corrupt)
    data.require_per_class(min_real_per_class(EVAL_NEIGHBOURS), "the evaluation's k-NN metrics")
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        fresh = build(pre.spec, data.num_classes)
    count = source_class_count(pre, fresh)
    mapping = class_mapping(pre, count, data.class_names, model.class_map)
    g, d = merge_weights(pre, fresh, mapping, count)
    fresh.load_state_dicts(g, d, f"base {base}")
    check_contract(fresh)
    state = {"base": base, "class_map": {data.class_names[t]: s for t, s in mapping.items()}}
    return Checkpoint.of(fresh, data.class_names, state), data
