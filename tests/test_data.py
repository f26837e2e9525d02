import logging
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raygan.data import load_dataset, prepare
from raygan.errors import DataError


def write_image(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "flowers"
    for i in range(3):
        write_image(root / "daisy" / f"{i}.png", (255, 255, 255))
        write_image(root / "rose" / f"{i}.jpg", (255, 0, 0))
    return root


def zip_folder(root, out, wrap=True):
    with zipfile.ZipFile(out, "w") as z:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                arcname = file.relative_to(root.parent if wrap else root)
                z.write(file, str(arcname))
    return out


def test_image_folder_loads_resized_in_unit_range_with_sorted_classes(folder):
    data = load_dataset(folder, resolution=32)
    assert data.class_names == ["daisy", "rose"]
    assert data.images.shape == (6, 3, 32, 32)
    x, y = data.batch(np.arange(6))
    assert x.min() >= -1 and x.max() <= 1
    rose = x[y == 1]
    assert rose[:, 0].mean() > 0.9 and rose[:, 1].mean() < -0.9  # red stays red


@pytest.mark.parametrize("wrap", [True, False])
def test_zip_of_image_folder_loads_the_same_as_the_folder(folder, tmp_path, wrap):
    archive = zip_folder(folder, tmp_path / "flowers.zip", wrap=wrap)
    a, b = load_dataset(folder, 32), load_dataset(archive, 32)
    assert a.class_names == b.class_names
    assert (a.images == b.images).all() and (a.labels == b.labels).all()


def test_prepare_writes_parquet_that_loads_like_the_source(folder, tmp_path):
    out = tmp_path / "flowers.parquet"
    assert prepare(folder, out) == 6
    table = pq.read_table(out)
    assert table.column_names == ["image", "label"]
    a, b = load_dataset(folder, 32), load_dataset(out, 32)
    assert a.class_names == b.class_names and (a.images == b.images).all()


def test_prepare_from_zip(folder, tmp_path):
    out = tmp_path / "z.parquet"
    assert prepare(zip_folder(folder, tmp_path / "f.zip"), out) == 6


def test_corrupt_image_error_names_the_file(folder):
    (folder / "rose" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=r"rose/broken\.jpg: not a readable image"):
        load_dataset(folder, 32)


def test_corrupt_image_error_does_not_name_an_in_memory_buffer(folder):
    (folder / "rose" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as error:
        load_dataset(folder, 32)
    assert "BytesIO" not in str(error.value) and "broken.png" in str(error.value)


def test_non_image_files_are_left_out_with_a_warning_as_imagefolder_does(folder, tmp_path, caplog):
    (folder / "daisy" / "notes.txt").write_text("hello")
    (folder / "rose" / "Thumbs.db").write_bytes(b"\x00" * 64)
    for source in (folder, zip_folder(folder, tmp_path / "f.zip")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert len(load_dataset(source, 32)) == 6
        assert "left out 2 non-image files" in caplog.text


def test_class_of_only_non_image_files_is_an_error(folder):
    (folder / "tulip").mkdir()
    (folder / "tulip" / "readme.md").write_text("tulips to come")
    with pytest.raises(DataError, match="class 'tulip' .* has no images"):
        load_dataset(folder, 32)


def test_corrupt_files_can_be_skipped_with_a_counted_warning(folder, caplog):
    (folder / "rose" / "broken.jpg").write_bytes(b"garbage")
    (folder / "rose" / "also.png").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        data = load_dataset(folder, 32, skip_corrupt=True)
    assert len(data) == 6
    assert "skipped 2 unreadable files" in caplog.text


def test_prepare_refuses_corrupt_input_and_writes_nothing(folder, tmp_path):
    (folder / "rose" / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match="broken.jpg"):
        prepare(folder, out)
    assert list(tmp_path.glob("*.parquet*")) == [] and list(tmp_path.glob(".out*")) == []


def test_empty_class_is_an_error(folder):
    (folder / "tulip").mkdir()
    with pytest.raises(DataError, match="class 'tulip' .* has no images"):
        load_dataset(folder, 32)


def test_class_with_only_corrupt_images_is_an_error_even_when_skipping(folder):
    write_image(folder / "tulip" / "x.png", (0, 0, 255))
    (folder / "tulip" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'tulip' has no readable images"):
        load_dataset(folder, 32, skip_corrupt=True)


def test_single_class_is_an_error(tmp_path):
    write_image(tmp_path / "only" / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match="single class"):
        load_dataset(tmp_path, 32)


def test_fewer_images_than_a_batch_is_an_error(folder):
    data = load_dataset(folder, 32)
    with pytest.raises(DataError, match="6 images, fewer than one batch of 16"):
        data.require_batch(16)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing", 32)


def test_bad_zip_and_unknown_demo_are_errors(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="not a valid zip"):
        load_dataset(bad, 32)
    with pytest.raises(DataError, match="unknown demo data set"):
        load_dataset("demo:faces", 32)


def test_parquet_missing_label_column_is_named(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="column 'label' is missing"):
        load_dataset(tmp_path / "p.parquet", 32)


def test_demo_domains_load_at_model_resolution():
    data = load_dataset("demo:target:50", 64)
    assert data.images.shape == (50, 3, 64, 64) and data.num_classes == 10
