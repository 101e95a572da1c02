"""miniImageNet, CUB-200-2011 and CIFAR-FS read from tiny folders in their official layouts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from datahelpers import write_image

from tinyshot.data.cifarfs import load_cifar_fs
from tinyshot.data.cub import class_split, load_cub
from tinyshot.data.miniimagenet import load_miniimagenet
from tinyshot.data.registry import list_datasets, load_dataset
from tinyshot.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- miniImageNet

WNIDS = {
    "train": ["n01532829", "n01558993", "n01704323"],
    "val": ["n01855672"],
    "test": ["n01930112", "n01981276"],
}


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    """Ravi & Larochelle layout: {train,val,test}.csv ("filename,label") + images/."""
    root = tmp_path / "mini-imagenet"
    for split, wnids in WNIDS.items():
        rows = ["filename,label"]
        for c, w in enumerate(wnids):
            for i in range(1, 5):
                name = f"{w}{i:08d}.jpg"
                write_image(root / "images" / name, value=10 * c + i)
                rows.append(f"{name},{w}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_miniimagenet_splits(mini_root: Path):
    tr = load_dataset("miniimagenet", "train", root=mini_root)
    te = load_miniimagenet("test", mini_root)
    assert tr.class_names == WNIDS["train"] and te.class_names == WNIDS["test"]
    assert np.bincount(tr.labels).tolist() == [4, 4, 4]
    i = tr.index_of("n0155899300000003.jpg")
    assert tr.labels[i] == 1
    assert np.asarray(tr.load_image(i))[0, 0, 0] in (12, 13)  # jpeg: within 1 level
    assert not set(tr.class_names) & set(te.class_names)


def test_miniimagenet_bad_inputs(mini_root: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"--split.*not 'validation'"):
        load_dataset("miniimagenet", "validation", root=mini_root)
    with pytest.raises(DataError, match=r"test\.csv: split file not found"):
        load_miniimagenet("test", tmp_path)
    (mini_root / "images" / "n0193011200000002.jpg").unlink()
    with pytest.raises(
        DataError,
        match=r"1 image\(s\) named in test\.csv are missing, e\.g\. n0193011200000002\.jpg",
    ):
        load_miniimagenet("test", mini_root)
    (mini_root / "val.csv").write_text("file,wnid\na.jpg,n1\n")
    with pytest.raises(DataError, match=r"val\.csv: expected header 'filename,label'"):
        load_miniimagenet("val", mini_root)
    (mini_root / "val.csv").write_text("filename,label\na.jpg\n")
    with pytest.raises(DataError, match=r"val\.csv:2: expected 'filename,label'"):
        load_miniimagenet("val", mini_root)
    (mini_root / "val.csv").write_text("filename,label\na.jpg,n1\na.jpg,n1\n")
    with pytest.raises(DataError, match=r"val\.csv:3: file 'a\.jpg' listed twice"):
        load_miniimagenet("val", mini_root)


def test_miniimagenet_folder_per_class_copy(tmp_path: Path):
    for w in ("n1", "n2"):
        write_image(tmp_path / "test" / w / "0.jpg")
    ds = load_miniimagenet("test", tmp_path)
    assert ds.name == "miniimagenet" and ds.class_names == ["n1", "n2"]


# ----------------------------------------------------------------------------- CUB

CUB_CLASSES = [f"{i:03d}.Bird_{chr(64 + i)}" for i in range(1, 9)]  # 8 classes


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """CUB_200_2011/{images.txt, classes.txt, image_class_labels.txt, images/}."""
    base = tmp_path / "CUB_200_2011"
    images, labels = [], []
    image_id = 0
    for cid, cname in enumerate(CUB_CLASSES, start=1):
        for k in range(3):
            image_id += 1
            rel = f"{cname}/{cname.split('.')[1]}_{k:04d}.jpg"
            write_image(base / "images" / rel, value=cid * 20 + k)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text(
        "\n".join(f"{i} {c}" for i, c in enumerate(CUB_CLASSES, start=1)) + "\n"
    )
    return tmp_path


def test_cub_seeded_split_is_50_25_25_and_deterministic(cub_root: Path):
    parts = {s: load_cub(s, cub_root, split_seed=3) for s in ("train", "val", "test")}
    sizes = [parts[s].num_classes for s in ("train", "val", "test")]
    assert sizes == [4, 2, 2]
    names = [set(parts[s].class_names) for s in parts]
    assert set().union(*names) == set(CUB_CLASSES) and sum(map(len, names)) == 8
    again = load_dataset("cub", "train", root=cub_root / "CUB_200_2011", split_seed=3)
    assert again.class_names == parts["train"].class_names
    other = load_cub("train", cub_root, split_seed=4)
    assert other.class_names != parts["train"].class_names
    full = class_split([f"c{i}" for i in range(200)], seed=0)
    assert [len(full[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    ds = parts["test"]
    i = 0
    assert ds.item_id(i).startswith(ds.class_names[ds.labels[i]] + "/")
    assert np.asarray(ds.load_image(i)).shape == (12, 12, 3)


def test_cub_split_file(cub_root: Path, tmp_path: Path):
    split = {"train": CUB_CLASSES[:4], "val": ["Bird_E", "Bird_F"], "test": CUB_CLASSES[6:]}
    f = tmp_path / "split.json"
    f.write_text(json.dumps(split))
    val = load_dataset("cub", "val", root=cub_root, split_file=str(f))
    assert val.class_names == ["005.Bird_E", "006.Bird_F"]  # short names resolved
    assert len(val) == 6
    split["test"] = ["Bird_Z"]
    f.write_text(json.dumps(split))
    with pytest.raises(DataError, match="split 'test' names unknown class 'Bird_Z'"):
        load_cub("test", cub_root, split_file=f)
    split["test"] = ["001.Bird_A"]
    f.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"class '001\.Bird_A' listed twice"):
        load_cub("test", cub_root, split_file=f)
    f.write_text('["not", "a", "dict"]')
    with pytest.raises(DataError, match="expected"):
        load_cub("test", cub_root, split_file=f)


def test_cub_bad_inputs(cub_root: Path, tmp_path: Path):
    base = cub_root / "CUB_200_2011"
    with pytest.raises(DataError, match="not a CUB-200-2011 folder"):
        load_cub("test", tmp_path / "elsewhere")
    classes = (base / "classes.txt").read_text()
    (base / "classes.txt").write_text(classes.replace("002.Bird_B", "001.Bird_A"))
    with pytest.raises(DataError, match=r"classes\.txt: duplicate class name '001\.Bird_A'"):
        load_cub("all", cub_root)
    (base / "classes.txt").write_text(classes)
    labels = (base / "image_class_labels.txt").read_text()
    (base / "image_class_labels.txt").write_text(labels.replace("\n5 2\n", "\n5 99\n"))
    with pytest.raises(DataError, match="image 5 has unknown class id '99'"):
        load_cub("all", cub_root)
    (base / "image_class_labels.txt").write_text(labels)
    (base / "images" / "003.Bird_C" / "Bird_C_0001.jpg").unlink()
    with pytest.raises(
        DataError, match=r"1 image\(s\) listed in images\.txt are missing.*Bird_C_0001"
    ):
        load_cub("all", cub_root)
    (base / "images.txt").write_text("1 a.jpg\nx b.jpg\n")
    with pytest.raises(DataError, match=r"images\.txt:2: expected '<id> <value>'"):
        load_cub("all", cub_root)


# ----------------------------------------------------------------------------- CIFAR-FS

FINE = [f"class{i:02d}" for i in range(10)]


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """cifar-100-python/{train,test,meta} pickles + splits/bertinetto/{train,val,test}.txt."""
    root = tmp_path / "cifar-fs"
    py = root / "cifar-100-python"
    py.mkdir(parents=True)
    for part, per_class in (("train", 5), ("test", 1)):
        labels = [c for c in range(10) for _ in range(per_class)]
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels  # red channel of pixel (0, 0) = class
        data[:, 1024] = np.arange(len(labels))  # green of pixel (0, 0) = row
        data[:, 2048] = 200 if part == "train" else 100
        with open(py / part, "wb") as f:
            pickle.dump(
                {
                    b"filenames": [b"x"] * len(labels),
                    b"fine_labels": labels,
                    b"coarse_labels": [0] * len(labels),
                    b"data": data,
                },
                f,
            )
    with open(py / "meta", "wb") as f:
        pickle.dump(
            {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [b"all"]}, f
        )
    splits = root / "splits" / "bertinetto"
    splits.mkdir(parents=True)
    for split, idx in (("train", range(0, 6)), ("val", range(6, 8)), ("test", range(8, 10))):
        (splits / f"{split}.txt").write_text("\n".join(FINE[i] for i in idx) + "\n")
    return root


def test_cifar_fs_merges_train_and_test_pickles(cifar_root: Path):
    te = load_dataset("cifar-fs", "test", root=cifar_root)
    assert te.class_names == ["class08", "class09"] and len(te) == 12
    assert np.bincount(te.labels).tolist() == [6, 6]
    px = np.asarray(te.load_image(te.index_of("test/9")))[0, 0]
    assert px.tolist() == [9, 9, 100]  # class 9, row 9 of the test pickle, channel order kept
    assert te.labels[te.index_of("train/44")] == 0 and te.labels[te.index_of("train/45")] == 1
    tr = load_cifar_fs("train", cifar_root)
    assert tr.num_classes == 6 and tr.images.shape == (36, 32, 32, 3)


def test_cifar_fs_bad_inputs(cifar_root: Path):
    splits = cifar_root / "splits" / "bertinetto"
    (splits / "val.txt").write_text("class06\nclass06\n")
    with pytest.raises(DataError, match=r"val\.txt:2: class 'class06' listed twice"):
        load_cifar_fs("val", cifar_root)
    (splits / "val.txt").write_text("class06\nunicorn\n")
    with pytest.raises(DataError, match=r"val\.txt:2: 'unicorn' is not a CIFAR-100 fine class"):
        load_cifar_fs("val", cifar_root)
    (splits / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt: CIFAR-FS split file not found"):
        load_cifar_fs("test", cifar_root)
    (cifar_root / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"train: not a readable CIFAR-100 pickle"):
        load_cifar_fs("train", cifar_root)


def test_cifar_fs_pickle_cannot_run_code(cifar_root: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar_root / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": Evil()}, f)
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        load_cifar_fs("train", cifar_root)


def test_registry_names_and_errors():
    assert list_datasets() == sorted(
        ["imagefolder", "fashion-mnist", "glyphs", "miniimagenet", "cub", "cifar-fs"]
    )
    with pytest.raises(ConfigError, match="unknown dataset 'omniglot'"):
        load_dataset("omniglot", "train")
    with pytest.raises(ConfigError, match="--root: dataset 'cub' cannot be downloaded"):
        load_dataset("cub", "test")
    with pytest.raises(ConfigError, match=r"unknown option.*colour.*accepted: split_file"):
        load_dataset("cub", "test", root=".", colour=True)
