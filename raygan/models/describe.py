"""`raygan inspect`: what raygan sees of a model before anyone spends GPU hours on it."""

from __future__ import annotations

import torch

from raygan.checkpoint import Checkpoint
from raygan.models.pretrained import check_contract, generate_probe
from raygan.models.seam import NETS, GanModel


def describe(base: Checkpoint) -> str:
    """A report of the model behind the seam; builds it and runs one G -> D pass."""
    model = base.build()
    shape = check_contract(model)
    lines = [
        f"adapter: {model.adapter}",
        f"classes: {model.num_classes} ({', '.join(base.class_names[:10])}"
        f"{', ...' if model.num_classes > 10 else ''})",
        f"class map (data class: base class index): {base.state.get('class_map', {})}",
        f"latent size: {model.latent_dim}; G output: {shape} in [-1, 1]",
    ]
    for net in NETS:
        lines += _net_lines(model, net)
    lines.append("class-conditional tensors (class c at start + c along dim):")
    lines += [
        f"  {t.net}.{t.name}  dim {t.dim}, start {t.start}" for t in model.conditional_tensors()
    ] or ["  none found (new label sets need the same class count)"]
    lines.append(_forward_line(model))
    return "\n".join(lines)


def _net_lines(model: GanModel, net: str) -> list[str]:
    total = sum(p.numel() for p in model.net(net).parameters())
    groups = model.freeze_groups(net)
    knob = "freeze_g" if net == "generator" else "freeze_d"
    order = "from the latent" if net == "generator" else "from the image"
    lines = [
        f"{net}: {total:,} parameters; {len(groups)} freeze groups {order}, "
        f"{knob} in [0, {model.max_freeze(net)}]"
    ]
    lines += [f"  {i:>2} {g.name:<28} {g.size():>12,}" for i, g in enumerate(groups, 1)]
    return lines


def _forward_line(model: GanModel) -> str:
    images = generate_probe(model, 4)
    with torch.no_grad():
        logits = model.discriminate(images, torch.arange(4) % model.num_classes)
    return (
        f"G -> D on random input: ok (images {tuple(images.shape)} in "
        f"[{float(images.min()):.3f}, {float(images.max()):.3f}], logits {tuple(logits.shape)})"
    )
