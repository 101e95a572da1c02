"""ONNX export parity, metadata, and the predict/export CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyshot.cli import main
from tinyshot.errors import ModelError
from tinyshot.models.export import OnnxClassifier, export_onnx
from tinyshot.models.students import build_student, save_student


def _trained_like(arch: str, n: int, size: int):
    torch.manual_seed(0)
    s = build_student(arch, n, size)
    s.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN running statistics
            s(torch.rand(8, 3, size, size))
    return s.eval()


@pytest.mark.parametrize("arch", ["conv4", "resnet12"])
def test_onnx_matches_torch(arch, tmp_path):
    s = _trained_like(arch, 4, 32)
    path = export_onnx(s, tmp_path / "m.onnx", ["w", "x", "y", "z"])
    clf = OnnxClassifier(path)
    assert clf.class_names == ["w", "x", "y", "z"] and clf.input_size == 32 and clf.arch == arch
    assert "normalisation inside the graph" in clf.meta["preprocessing"]
    for b in (1, 5):  # dynamic batch axis
        x = torch.rand(b, 3, 32, 32)
        with torch.no_grad():
            ref = s(x).numpy()
        assert np.abs(clf.logits(x.numpy()) - ref).max() < 1e-4


def test_predict_cli(tmp_path, capsys):
    s = _trained_like("conv4", 3, 32)
    ck = save_student(s, tmp_path / "s.pt", class_names=["cat", "dog", "fox"])
    model = tmp_path / "m.onnx"
    assert main(["export", str(ck), "--out", str(model)]) == 0
    assert "max |torch - onnxruntime|" in capsys.readouterr().out
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    pils = []
    for i in range(2):
        arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(imgs / f"im{i}.png")
        pils.append(Image.fromarray(arr))
    assert main(["predict", str(model), str(imgs), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["file"].endswith(f"im{i}.png") for i, r in enumerate(out["results"])] == [True, True]
    # the CLI's answer is the student's answer on "resize bicubic, scale to [0,1]"
    from tinyshot.data.transforms import images_to_tensor

    with torch.no_grad():
        p = torch.softmax(s(images_to_tensor(pils, 32)), 1).numpy()
    for r, pi in zip(out["results"], p):
        assert r["top"][0]["class"] == ["cat", "dog", "fox"][int(pi.argmax())]
        assert abs(r["top"][0]["prob"] - float(pi.max())) < 1e-4
        assert len(r["top"]) == 2
    # a bad file is reported by name, the good ones are still classified
    (imgs / "broken.png").write_bytes(b"not a png")
    assert main(["predict", str(model), str(imgs)]) == 1
    cap = capsys.readouterr()
    assert cap.out.count("\t") == 4 and "broken.png: not a readable image" in cap.err
    # a missing path is treated like a bad file: named, the rest classified, exit status 1
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["predict", str(model), str(tmp_path / "gone.png"), str(imgs), str(empty), "--json"]
    assert main(argv) == 1
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert sorted(Path(r["file"]).name for r in out["results"]) == ["im0.png", "im1.png"]
    assert [Path(e["file"]).name for e in out["errors"]] == ["gone.png", "empty", "broken.png"]
    assert "gone.png: no such file or folder" in cap.err
    assert "empty: folder holds no images" in cap.err and "3 bad input(s)" in cap.err
    assert main(["predict", str(tmp_path / "none.onnx"), str(imgs)]) == 2
    assert "ONNX model not found" in capsys.readouterr().err


def test_predict_decodes_one_batch_at_a_time_and_keeps_order(tmp_path, monkeypatch):
    import tinyshot.data.images as images_mod
    from tinyshot.models.commands import classify_files

    s = _trained_like("conv4", 3, 32)
    clf = OnnxClassifier(export_onnx(s, tmp_path / "m.onnx", ["a", "b", "c"]))
    rng = np.random.default_rng(1)
    files = []
    for i in range(7):
        f = tmp_path / f"im{i}.png"
        if i == 3:
            f.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(f)
        files.append(f)
    whole = list(classify_files(clf, files, 64, 3))
    opened, seen_at_predict = [], []
    real_open, real_predict = images_mod.open_rgb, OnnxClassifier.predict
    monkeypatch.setattr(images_mod, "open_rgb", lambda f: opened.append(f) or real_open(f))

    def spy(self, images, batch_size=64):
        seen_at_predict.append((len(opened), len(images)))
        return real_predict(self, images, batch_size)

    monkeypatch.setattr(OnnxClassifier, "predict", spy)
    batched = list(classify_files(clf, files, 2, 3))
    # 7 files in batches of 2: each batch is decoded only when the one before is classified
    assert seen_at_predict == [(2, 2), (4, 1), (6, 2), (7, 1)]
    assert [r["file"] for r in batched] == [str(f) for f in files]
    assert "not a readable image" in batched[3]["error"]
    for a, b in zip(whole, batched):
        assert a.keys() == b.keys()
        if "top" in a:
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            assert np.allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]])


def test_predict_labelled_scores_images_by_their_class_folder(tmp_path, capsys):
    s = _trained_like("conv4", 3, 32)
    names = ["T-shirt/top", "dog", "fox"]
    model = export_onnx(s, tmp_path / "m.onnx", names)
    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    from tinyshot.data.transforms import images_to_tensor

    with torch.no_grad():
        pred = s(images_to_tensor([Image.fromarray(a) for a in arrs], 32)).argmax(1).tolist()
    root = tmp_path / "labelled"
    folders = ["T-shirt_top", "dog", "dog", "Fox", "fox", "fox"]  # class folder names, any case
    for i, (a, folder) in enumerate(zip(arrs, folders)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / folder / f"im{i}.png")
    truth = [0, 1, 1, 2, 2, 2]
    assert main(["predict", str(model), str(root), "--labelled", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["labelled"]
    assert got["images"] == 6
    assert got["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(pred, truth)]))
    fox = [p == 2 for p, t in zip(pred, truth) if t == 2]
    assert got["per_class"]["fox"] == {"accuracy": pytest.approx(np.mean(fox)), "images": 3}
    assert main(["predict", str(model), str(root), "--labelled"]) == 0
    assert "on 6 labelled images (fp32)" in capsys.readouterr().out
    # a folder that names no class is an error naming it, not a silent miss
    (root / "cow").mkdir()
    Image.fromarray(arrs[0]).save(root / "cow" / "x.png")
    assert main(["predict", str(model), str(root), "--labelled"]) == 2
    assert "'cow' is none of the model's classes" in capsys.readouterr().err


def test_foreign_onnx_and_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxClassifier(bad)
    from tinyshot.utils.checkpoint import save_checkpoint

    ck = save_checkpoint(
        tmp_path / "t.pt",
        model=torch.nn.Linear(2, 2),
        step=0,
        meta={"kind": "teacher", "arch": "protonet:conv4"},
    )
    assert main(["export", str(ck), "--out", str(tmp_path / "o.onnx")]) == 2
    assert "not a student checkpoint" in capsys.readouterr().err


def test_export_metadata_says_what_the_graph_does_to_its_input(tmp_path):
    conv = export_onnx(_trained_like("conv4", 2, 16), tmp_path / "c.onnx", ["a", "b"])
    meta = OnnxClassifier(conv).meta
    norm = json.loads(meta["normalization"])
    assert norm["mean"] == [0.485, 0.456, 0.406] and norm["std"] == [0.229, 0.224, 0.225]
    assert (meta["input_channels"], meta["precision"], norm["grey_inside_graph"]) == (
        "3",
        "fp32",
        False,
    )
    grey = export_onnx(build_student("conv4", 2, 16, in_channels=1).eval(), tmp_path / "g.onnx")
    norm = json.loads(OnnxClassifier(grey).meta["normalization"])
    assert norm["grey_inside_graph"] is True and len(norm["mean"]) == 1


def test_efficientnet_lite0_exports_with_its_preprocessing_and_predicts_grey_images(
    tmp_path, capsys
):
    """The mobile student's graph scales to [-1, 1] inside (metadata says so); a grey image
    file is read as RGB with equal channels, exactly as its RGB copy."""
    torch.manual_seed(0)
    s = build_student("efficientnet-lite0", 3, 64).eval()
    path = export_onnx(s, tmp_path / "lite0.onnx", ["cat", "dog", "fox"])  # parity checked
    clf = OnnxClassifier(path)
    assert (clf.arch, clf.input_size, clf.precision) == ("efficientnet-lite0", 64, "fp32")
    assert json.loads(clf.meta["normalization"])["mean"] == [0.5, 0.5, 0.5]
    assert clf.meta["num_parameters"] == str(3_371_008 + 1280 * 3 + 3)
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), mode="L")
    grey.save(tmp_path / "grey.png")
    grey.convert("RGB").save(tmp_path / "rgb.png")
    assert main(["predict", str(path), str(tmp_path / "grey.png"), "--json"]) == 0
    (g,) = json.loads(capsys.readouterr().out)["results"]
    assert main(["predict", str(path), str(tmp_path / "rgb.png"), "--json"]) == 0
    (c,) = json.loads(capsys.readouterr().out)["results"]
    assert g["top"] == c["top"]
    from tinyshot.data.transforms import images_to_tensor

    with torch.no_grad():
        p = torch.softmax(s(images_to_tensor([grey.convert("RGB")], 64)), 1)[0]
    assert g["top"][0]["class"] == ["cat", "dog", "fox"][int(p.argmax())]
    assert abs(g["top"][0]["prob"] - float(p.max())) < 1e-4
