"""Labeled image sets: ImageFolder directories, .zip archives of them, Parquet files, and the
embedded demo domains. Everything is decoded once into memory as uint8 tensors at the model
resolution: raygan targets small data sets, and a fine-tuning step should not wait on JPEG
decoding."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from raygan.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CLASS_NAMES_KEY = b"raygan.class_names"
DEMO_PREFIX = "demo:"
DEMO_SIZES = {"source": 10_000, "target": 500}  # the target domain is the small new data set
DEMO_SEEDS = {"source": 0, "target": 1}


@dataclass
class LabeledImages:
    images: torch.Tensor  # (N, 3, R, R) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images scaled to [-1, 1] and their labels."""
        return to_unit_range(self.images[index]), self.labels[index]

    def require_batch(self, batch_size: int) -> None:
        if len(self) < batch_size:
            raise DataError(
                f"{self.source} has {len(self)} images, fewer than one batch of {batch_size}"
            )

    def require_per_class(self, minimum: int, why: str) -> None:
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        pairs = zip(self.class_names, counts.tolist(), strict=True)
        few = [(name, n) for name, n in pairs if n < minimum]
        if few:
            name, n = few[0]
            raise DataError(
                f"{self.source}: class '{name}' has {n} images; {why} need at least {minimum} "
                f"per class ({len(few)} class(es) short)"
            )


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def load_dataset(source: str | Path, resolution: int, skip_corrupt: bool = False) -> LabeledImages:
    """Load `demo:<source|target>[:N]`, an ImageFolder directory, a .zip of one, or .parquet."""
    text = str(source)
    if text.startswith(DEMO_PREFIX):
        return load_demo(text, resolution)
    path = Path(text)
    if not path.exists():
        raise DataError(f"data set not found: {path}")
    if path.is_dir():
        records = _folder_records(path)
    elif path.suffix == ".zip":
        records = _zip_records(path)
    elif path.suffix == ".parquet":
        return _load_parquet(path, resolution, skip_corrupt)
    else:
        raise DataError(f"{path}: expected a directory, a .zip or a .parquet file")
    class_names = _check_classes(records, text)
    return _decode_all(records, class_names, resolution, skip_corrupt, text)


def load_demo(spec: str, resolution: int) -> LabeledImages:
    from raygan.demo_domains import CLASS_NAMES, make_domain

    parts = spec[len(DEMO_PREFIX) :].split(":")
    domain = parts[0]
    if domain not in DEMO_SIZES or len(parts) > 2:
        raise DataError(f"unknown demo data set {spec!r}: use demo:source or demo:target[:N]")
    try:
        n = int(parts[1]) if len(parts) == 2 else DEMO_SIZES[domain]
    except ValueError:
        raise DataError(f"demo data set {spec!r}: size {parts[1]!r} is not an integer") from None
    try:
        images, labels = make_domain(domain, n, seed=DEMO_SEEDS[domain], resolution=resolution)
    except ValueError as e:  # e.g. a model resolution the demo domains cannot draw
        raise DataError(f"demo data set {spec!r} at resolution {resolution}: {e}") from None
    return LabeledImages(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=torch.from_numpy(labels).long(),
        class_names=list(CLASS_NAMES),
        source=spec,
    )


# A record is (class name, display name for errors, a callable returning the raw bytes).
Record = tuple[str, str, Callable[[], bytes]]


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "__MACOSX"))


def _image_files(names: list[str], source: object) -> list[str]:
    """The names with an image suffix, as torchvision's ImageFolder picks them. The others
    (Thumbs.db, notes, label files) are left out, with a warning."""
    images = [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
    others = sorted(set(names) - set(images))
    if others:
        log.warning("%s: left out %d non-image files, e.g. %s", source, len(others), others[0])
    return images


def _folder_records(root: Path) -> list[Record]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected ROOT/<class>/<image>)")
    files = [
        (class_dir.name, f)
        for class_dir in class_dirs
        for f in sorted(class_dir.rglob("*"))
        if f.is_file() and not _is_hidden(f.name)
    ]
    images = set(_image_files([str(f) for _, f in files], root))
    records = [(c, str(f), f.read_bytes) for c, f in files if str(f) in images]
    with_images = {c for c, _, _ in records}
    for class_dir in class_dirs:
        if class_dir.name not in with_images:
            raise DataError(f"class '{class_dir.name}' in {root} has no images")
    return records


def _zip_records(path: Path) -> list[Record]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a valid zip file") from None
    names = [
        n
        for n in archive.namelist()
        if not n.endswith("/") and not any(_is_hidden(p) for p in PurePosixPath(n).parts)
    ]
    names = _image_files(names, path)
    parts = [PurePosixPath(n).parts for n in names]
    # Zipping a folder usually wraps the class folders in one top-level directory.
    if parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    records: list[Record] = []
    for name, p in zip(names, parts, strict=True):
        if len(p) < 2:
            raise DataError(f"{path}: {name} is not inside a class folder")
        records.append((p[0], f"{path}:{name}", lambda n=name: archive.read(n)))
    if not records:
        raise DataError(f"{path}: the archive holds no images")
    return records


def _check_classes(records: list[Record], source: str) -> list[str]:
    class_names = sorted({r[0] for r in records})
    if len(class_names) < 2:
        raise DataError(f"{source}: found a single class {class_names}; need at least 2")
    return class_names


def decode_image(data: bytes, resolution: int, name: str) -> np.ndarray:
    """Decode, convert to RGB, resize the short side and center-crop to resolution^2."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.fit(img.convert("RGB"), (resolution, resolution), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the file
        raise DataError(f"{name}: not a readable image (unknown format or corrupt)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{name}: not a readable image ({e})") from None


def _decode_all(
    records: list[Record], class_names: list[str], resolution: int, skip_corrupt: bool, source: str
) -> LabeledImages:
    index = {name: i for i, name in enumerate(class_names)}
    images, labels, skipped = [], [], []
    for class_name, display, read in records:
        try:
            images.append(decode_image(read(), resolution, display))
        except DataError:
            if not skip_corrupt:
                raise
            skipped.append(display)
            continue
        labels.append(index[class_name])
    if skipped:
        log.warning("skipped %d unreadable files in %s, e.g. %s", len(skipped), source, skipped[0])
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{source}: class '{empty[0]}' has no readable images")
    return LabeledImages(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=class_names,
        source=source,
    )


def _load_parquet(path: Path, resolution: int, skip_corrupt: bool) -> LabeledImages:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for column in ("image", "label"):
        if column not in table.column_names:
            raise DataError(f"{path}: column '{column}' is missing (have {table.column_names})")
    labels = [str(v) for v in table.column("label").to_pylist()]
    metadata = table.schema.metadata or {}
    class_names = (
        json.loads(metadata[CLASS_NAMES_KEY])
        if CLASS_NAMES_KEY in metadata
        else sorted(set(labels))
    )
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:3]} are not in the stored class names")
    images = table.column("image").to_pylist()
    records = [
        (label, f"{path} row {i}", lambda b=blob: _row_bytes(b))
        for i, (label, blob) in enumerate(zip(labels, images, strict=True))
    ]
    if len(class_names) < 2:
        raise DataError(f"{path}: found a single class {class_names}; need at least 2")
    return _decode_all(records, class_names, resolution, skip_corrupt, str(path))


def _row_bytes(blob: bytes | dict | None) -> bytes:
    # HuggingFace-style image columns are structs {"bytes": ..., "path": ...}.
    if isinstance(blob, dict):
        blob = blob.get("bytes")
    return blob or b""


def prepare(src: str | Path, out: str | Path, skip_corrupt: bool = False) -> int:
    """Convert an ImageFolder directory or .zip into a Parquet file (image bytes + label).

    Every image is decoded once to check it, but the original bytes are stored, so no
    quality is lost. Returns the number of rows written."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"data set not found: {src}")
    if out.suffix != ".parquet":
        raise DataError(f"output {out} must end in .parquet")
    records = _folder_records(src) if src.is_dir() else _zip_records(src)
    class_names = _check_classes(records, str(src))
    rows = _checked_rows(records, skip_corrupt, str(src))
    present = {label for label, _ in rows}
    missing = [c for c in class_names if c not in present]
    if missing:
        raise DataError(f"{src}: class '{missing[0]}' has no readable images")
    table = pa.table(
        {"image": [b for _, b in rows], "label": [label for label, _ in rows]},
        schema=pa.schema(
            [("image", pa.binary()), ("label", pa.string())],
            metadata={CLASS_NAMES_KEY: json.dumps(class_names).encode()},
        ),
    )
    _write_atomically(table, out)
    return len(rows)


def _checked_rows(
    records: list[Record], skip_corrupt: bool, source: str
) -> list[tuple[str, bytes]]:
    rows, skipped = [], 0
    for class_name, display, read in records:
        data = read()
        try:
            decode_image(data, 8, display)
        except DataError:
            if not skip_corrupt:
                raise
            skipped += 1
            continue
        rows.append((class_name, data))
    if skipped:
        log.warning("skipped %d unreadable files in %s", skipped, source)
    return rows


def _write_atomically(table: pa.Table, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sample_batches(
    data: LabeledImages, batch_size: int, seed: int = 0, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random batches; each DDP rank passes its own seed so ranks see different data.
    Pass `generator` to own the stream's position (a resumed trial restores it)."""
    gen = generator or torch.Generator().manual_seed(seed)
    while True:
        yield data.batch(torch.randint(len(data), (batch_size,), generator=gen))
