"""ImageFolder loader: layout rules, every image mode, and each bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelpers import write_image
from PIL import Image

from tinyshot.data.imagefolder import load_imagefolder, validate_images
from tinyshot.data.registry import load_dataset
from tinyshot.errors import ConfigError, DataError


def test_classes_sorted_and_items_labelled(folder_tree: Path):
    ds = load_imagefolder(folder_tree)
    assert ds.class_names == ["ant", "bee", "zebra"]
    assert len(ds) == 18
    assert np.bincount(ds.labels).tolist() == [6, 6, 6]
    i = ds.index_of("zebra/03.png")
    assert ds.labels[i] == 2
    img = ds.load_image(i)
    assert img.mode == "RGB" and img.size == (12, 12)
    assert np.asarray(img)[0, 0].tolist() == [3, 3, 3]  # zebra was written with value 0*40+3


def test_hidden_nested_and_non_image_files(folder_tree: Path, tinyshot_log):
    (folder_tree / ".cache").mkdir()
    write_image(folder_tree / ".cache" / "x.png")  # hidden folder: not a class
    write_image(folder_tree / "ant" / ".thumb.png")  # hidden file
    write_image(folder_tree / "ant" / "deeper" / "n.jpg")  # nested file counts for its class
    (folder_tree / "ant" / "notes.txt").write_text("not an image")
    (folder_tree / "bee" / "labels.csv").write_text("a,b")
    ds = load_imagefolder(folder_tree)
    assert ds.class_names == ["ant", "bee", "zebra"]
    assert np.bincount(ds.labels).tolist() == [7, 6, 6]
    assert "ant/deeper/n.jpg" in [ds.item_id(i) for i in range(len(ds))]
    assert sorted(p.as_posix() for p in ds.skipped) == ["ant/notes.txt", "bee/labels.csv"]
    warnings = [r.getMessage() for r in tinyshot_log if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipped 2 non-image file(s)" in warnings[0]
    assert "ant/notes.txt" in warnings[0]


def test_every_image_mode_becomes_rgb(tmp_path: Path):
    root = tmp_path / "modes"
    cls = root / "c"
    cls.mkdir(parents=True)
    Image.new("L", (10, 10), 77).save(cls / "gray.png")
    Image.new("LA", (10, 10), (77, 255)).save(cls / "gray_alpha.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 0)).save(cls / "transparent.png")  # on white
    Image.new("RGBA", (10, 10), (10, 20, 30, 255)).save(cls / "opaque.png")
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(cls / "palette.png")
    Image.new("CMYK", (10, 10), (0, 0, 0, 0)).save(cls / "cmyk.jpg")
    ramp = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    Image.fromarray(ramp).save(cls / "deep16.png")
    Image.new("RGB", (10, 10), (1, 2, 3)).save(cls / "x.bmp")
    Image.new("RGB", (10, 10), (1, 2, 3)).save(cls / "x.webp", lossless=True)
    Image.new("RGB", (10, 10), (1, 2, 3)).save(cls / "x.tiff")
    ds = load_imagefolder(root)
    px = {ds.item_id(i).split("/")[1]: np.asarray(ds.load_image(i)) for i in range(len(ds))}
    assert all(a.shape == (10, 10, 3) and a.dtype == np.uint8 for a in px.values())
    assert px["gray.png"][0, 0].tolist() == [77, 77, 77]
    assert px["gray_alpha.png"][0, 0].tolist() == [77, 77, 77]
    assert px["transparent.png"][0, 0].tolist() == [255, 255, 255]
    assert px["opaque.png"][0, 0].tolist() == [10, 20, 30]
    assert px["palette.png"][0, 0].tolist() == [200, 100, 50]
    assert px["cmyk.jpg"][0, 0].tolist() == [255, 255, 255]
    deep = px["deep16.png"][..., 0]
    assert deep[0, 0] == 0 and deep[-1, -1] == 255  # 16-bit range rescaled to 8 bits
    assert px["x.webp"][0, 0].tolist() == [1, 2, 3]
    validate_images(ds)  # all fine: no error


def test_corrupt_and_tiny_images(folder_tree: Path):
    (folder_tree / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder_tree / "bee" / "empty.png").write_bytes(b"")
    write_image(folder_tree / "zebra" / "tiny.png", size=4)
    ds = load_imagefolder(folder_tree)  # scanning does not decode
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        ds.load_image(ds.index_of("ant/broken.jpg"))
    with pytest.raises(DataError, match=r"tiny\.png: image is 4x4, smaller than 8 px"):
        ds.load_image(ds.index_of("zebra/tiny.png"))
    with pytest.raises(DataError) as e:
        ds.validate()
    msg = str(e.value)
    assert "3 of 21 images cannot be used" in msg  # every bad file, in one report
    for name in ("broken.jpg", "empty.png", "tiny.png"):
        assert name in msg


def test_validate_lists_at_most_20_bad_files(tmp_path: Path):
    for i in range(25):
        (tmp_path / "c" / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / f"{i}.png").write_bytes(b"junk")
    ds = load_imagefolder(tmp_path)
    with pytest.raises(DataError, match="25 of 25 images") as e:
        ds.validate()
    assert "and 5 more" in str(e.value)


def test_empty_class_names_the_folder(folder_tree: Path):
    (folder_tree / "cat").mkdir()
    with pytest.raises(DataError, match=r"class folder 'cat' has no images"):
        load_imagefolder(folder_tree)
    (folder_tree / "cat" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"'cat' has no images \(only non-image files: readme.md"):
        load_imagefolder(folder_tree)


def test_duplicate_class_names_up_to_case(folder_tree: Path):
    write_image(folder_tree / "Bee" / "a.png")
    with pytest.raises(DataError, match=r"'Bee' and 'bee'|'bee' and 'Bee'"):
        load_imagefolder(folder_tree)


def test_missing_root_and_flat_folder(tmp_path: Path):
    with pytest.raises(DataError, match="image folder not found"):
        load_imagefolder(tmp_path / "nope")
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=r"no class sub-folders \(1 files lie directly in it\)"):
        load_imagefolder(tmp_path / "flat")


def test_split_subfolders_through_registry(tmp_path: Path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            write_image(tmp_path / split / cls / "0.png")
    ds = load_dataset("imagefolder", "test", root=tmp_path)
    assert ds.split == "test" and ds.class_names == ["a", "b"]
    with pytest.raises(DataError, match="no sub-folder 'val'"):
        load_dataset("imagefolder", "val", root=tmp_path)
    with pytest.raises(ConfigError, match="--root"):
        load_dataset("imagefolder", "all")
    assert load_dataset("imagefolder", "all", root=tmp_path / "train").num_classes == 2
