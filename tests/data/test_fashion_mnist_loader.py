"""Fashion-MNIST: idx files written in the official format, meta-splits, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelpers import write_fashion_mnist

from tinyshot.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, load_fashion_mnist
from tinyshot.data.registry import load_dataset
from tinyshot.errors import DataError


@pytest.fixture
def fmnist_root(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path)


def test_raw_splits_gz_and_plain(fmnist_root: Path):
    tr = load_fashion_mnist("train", fmnist_root)
    te = load_fashion_mnist("test", fmnist_root)  # un-gzipped files accepted too
    assert (len(tr), len(te)) == (40, 20)
    assert tr.images.shape == (40, 28, 28) and tr.class_names == CLASS_NAMES
    assert tr.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.asarray(te.load_image(7))[0, 0].tolist() == [7, 7, 7]


def test_meta_splits_keep_names_and_item_ids(fmnist_root: Path):
    base = load_dataset("fashion-mnist", "base", root=fmnist_root)
    novel_tr = load_dataset("fashion-mnist", "novel-train", root=fmnist_root)
    novel_te = load_dataset("fashion-mnist", "novel-test", root=fmnist_root)
    assert base.class_names == CLASS_NAMES[:5] and novel_te.class_names == CLASS_NAMES[5:]
    assert (len(base), len(novel_tr), len(novel_te)) == (20, 20, 10)
    assert set(base.labels) == set(range(5)) and set(novel_tr.labels) == set(range(5))
    assert novel_te.split == "novel-test"
    # ids are those of the raw split: item "17" (label 7 = Sneaker) is novel class 2
    i = novel_tr.index_of("17")
    assert novel_tr.labels[i] == 2 and novel_tr.class_names[2] == "Sneaker"
    assert np.asarray(novel_tr.load_image(i))[0, 0, 0] == 17
    with pytest.raises(DataError, match="no item with id '3'"):
        novel_tr.index_of("3")  # a base-class item


def test_bad_idx_files(fmnist_root: Path, tmp_path: Path):
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        load_fashion_mnist("val", fmnist_root)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz: Fashion-MNIST file not found"
    ):
        load_fashion_mnist("train", tmp_path / "missing")
    # wrong magic: a labels file where images are expected
    img = fmnist_root / "t10k-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes((fmnist_root / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: not an idx file \(magic 0x801"):
        load_fashion_mnist("test", fmnist_root)
    # truncated: the header promises 20 images
    img.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated idx file"):
        load_fashion_mnist("test", fmnist_root)
    # corrupt gzip
    (fmnist_root / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="cannot read idx file"):
        load_fashion_mnist("train", fmnist_root)


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_debian_package_files():
    te = load_dataset("fashion-mnist", "novel-test")
    assert len(te) == 5000 and np.bincount(te.labels).tolist() == [1000] * 5
    raw = load_fashion_mnist("test")
    assert raw.images.shape == (10000, 28, 28) and raw.images.dtype == np.uint8


def test_novel_pool_is_the_held_out_part_of_the_known_recipe():
    """The concept-known generator's recipe and the support split agree on the pool exactly."""
    from tinyshot.data.fashion_mnist import heldout_pool, load_fashion_mnist, pool_checksum
    from tinyshot.data.registry import load_dataset
    from tinyshot.diffusion.pretrain import GENERIC_CAPTION, fashion_mnist_known_recipe

    train = load_fashion_mnist("train")
    pool = heldout_pool(train.labels)
    assert len(pool) == 5000 and len(set(pool.tolist())) == 5000
    assert np.bincount(train.labels[pool], minlength=10).tolist() == [0] * 5 + [1000] * 5
    split = load_dataset("fashion-mnist", "novel-pool")
    assert [split.item_id(i) for i in range(len(split))] == [str(i) for i in pool]
    assert split.class_counts().tolist() == [1000] * 5
    data = fashion_mnist_known_recipe()
    assert len(data) == 55000
    assert data.info["heldout_pool"]["sha256_16"] == pool_checksum(pool)
    named = {c: data.captions.count(f"a photo of a {c}") for c in ("sandal", "shirt", "bag")}
    generic = data.captions.count(GENERIC_CAPTION)
    assert all(3800 < v <= 5000 for v in named.values())
    assert 0.18 < generic / len(data) < 0.22
    # the pool's pixels are not among the training images (row bytes of the padded images)
    seen = {row.tobytes() for row in data.images[:, 2:30, 2:30]}
    assert sum(train.images[i].tobytes() in seen for i in pool) < 5  # exact duplicates only
