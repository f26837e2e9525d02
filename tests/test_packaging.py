"""What a non-editable install (`pip install .`, the Docker image) ships."""

import tomllib
from pathlib import Path

import raygan

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_globs_ship_every_file_of_the_demo_base():
    # Without the base a wheel install silently pretrains one first: ~51 min on 2 cores.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["raygan"]
    package = Path(raygan.__file__).parent
    shipped = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    assets = {p for p in (package / "assets").rglob("*") if p.is_file()}
    assert {p.name for p in assets} >= {"raygan.json", "generator.safetensors"}
    assert assets <= shipped, sorted(str(p) for p in assets - shipped)
