"""`tinyshot fit` run folders: every check runs before the first write, and each refusal says
what differs. The runs here stop at the first heavy stage (a simulated Ctrl-C), so they take
a second each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyshot.cli import main
from tinyshot.pipeline.run_folder import config_differences


def _folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, k in counts.items():
        (root / name).mkdir(parents=True)
        for j in range(k):
            arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{j}.png")
    return root


@pytest.fixture
def stop_at_generation(monkeypatch):
    """fit is 'killed' (Ctrl-C) when its first heavy stage starts."""

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tinyshot.pipeline.fit.specialize_and_generate", interrupted)


def test_config_differences_name_each_key_with_both_values():
    old = {"seed": 0, "config": {"alpha": 1.0, "specialize": {"ti_steps": 150}}, "base": None}
    new = {"seed": 1, "config": {"alpha": 1.0, "specialize": {"ti_steps": 20, "x": 2}}}
    assert config_differences(old, new) == [
        "base: null -> unset",
        "config.specialize.ti_steps: 150 -> 20",
        "config.specialize.x: unset -> 2",
        "seed: 0 -> 1",
    ]
    assert config_differences(new, new) == []


def test_failed_check_creates_no_run_folder(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    (data / "dogs" / "bad.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(run)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert not run.exists()
    (data / "dogs" / "bad.png").unlink()
    assert main(["fit", str(data), "--out", str(run), "--base", "no-such-dataset"]) == 2
    assert "no-such-dataset" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("inside", ["run", "cats/run", "."])
def test_out_inside_the_data_folder_is_refused(tmp_path, capsys, inside):
    data = _folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(["fit", str(data), "--out", str(data / inside)]) == 2
    err = capsys.readouterr().err
    assert "inside DATA_DIR" in err and "outside the data folder" in err
    assert "has no images" not in err
    if inside == "cats/run":
        assert "class folder 'cats'" in err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written


def test_refused_rerun_leaves_classes_json_and_names_the_difference(
    tmp_path, capsys, stop_at_generation
):
    data = _folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    run = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(run)]) == 130  # killed after the checks
    assert json.loads((run / "classes.json").read_text()) == ["cats", "dogs"]
    stamp = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    (data / "dogs").rename(data / "wolves")
    capsys.readouterr()
    assert main(["fit", str(data), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no longer in DATA_DIR: dogs" in err and "new: wolves" in err
    assert json.loads((run / "classes.json").read_text()) == ["cats", "dogs"]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamp


def test_config_mismatch_names_each_option(tmp_path, capsys, stop_at_generation):
    data = _folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    run = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(run), "--ti-steps", "4"]) == 130
    before = (run / "config.json").read_bytes()
    capsys.readouterr()
    argv = ["fit", str(data), "--out", str(run), "--ti-steps", "5", "--seed", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config.specialize.ti_steps: 4 -> 5" in err and "seed: 0 -> 3" in err
    assert "alpha" not in err  # only the differing options
    assert (run / "config.json").read_bytes() == before
    assert main(["fit", str(data), "--out", str(run), "--ti-steps", "4"]) == 130  # resumes


def test_a_class_with_one_image_is_warned_about(tmp_path, stop_at_generation):
    data = _folder(tmp_path / "data", {"cats": 1, "dogs": 3})
    run = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(run)]) == 130
    log = (run / "log.txt").read_text()
    assert "WARNING" in log and "'cats' have a single image (K=1)" in log
    assert "'dogs'" not in log.split("K=1")[0].rsplit("\n", 1)[-1]


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_out_at_or_below_a_file_is_a_clear_error(tmp_path, capsys, where):
    data = _folder(tmp_path / "data", {"cats": 2, "dogs": 2})
    (tmp_path / "file").write_text("x")
    assert main(["fit", str(data), "--out", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--out {tmp_path / where}" in err
    assert ("is a file, not a folder" if where == "file" else "is a file, so no folder") in err
    assert (tmp_path / "file").read_text() == "x"


def test_a_dataset_one_level_too_deep_names_the_folder_to_pass(tmp_path, capsys):
    data = _folder(tmp_path / "data" / "animals", {"fish": 2, "cat": 2}).parent
    assert main(["fit", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "found 1 class folder(s)" in err and "cat, fish" in err
    assert f"pass {data / 'animals'}" in err
    assert not (tmp_path / "run").exists()


def test_a_class_folder_of_sub_folders_is_warned_about_by_name(
    tmp_path, caplog, stop_at_generation
):
    data = tmp_path / "data"
    _folder(data / "animals", {"fish": 2, "cat": 2})
    _folder(data, {"dogs": 2})
    with caplog.at_level("WARNING"):
        main(["fit", str(data), "--out", str(tmp_path / "run")])
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'animals'" in m and "cat, fish" in m and "one class" in m for m in said)
