"""Episode files (versioned JSON) and the `tinyshot episodes` / `tinyshot datasets` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datahelpers import write_fashion_mnist, write_image

from tinyshot.cli import main
from tinyshot.data.episode_io import (
    check_episodes,
    episode_datasets,
    read_episodes,
    write_episodes,
)
from tinyshot.data.episodes import Episode
from tinyshot.data.fashion_mnist import DEFAULT_ROOT
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.errors import DataError

META = {"dataset": {"name": "toy", "split": "test"}, "ways": 2, "shots": 1, "seed": 3}


def test_round_trip_and_all_queries(tmp_path: Path):
    eps = [
        Episode(["a", "b"], [["1"], ["2"]], [["3", "4"], ["5"]], seed=11),
        Episode(["b", "c"], [["2"], ["6"]], [["5"], ["7", "8", "9"]], seed=12),
    ]
    path = write_episodes(tmp_path / "e.json", eps, {**META, "queries": None, "note": "x"})
    doc = json.loads(path.read_text())
    assert doc["format"] == "tinyshot.episodes" and doc["version"] == 1
    assert doc["queries"] == "all" and doc["note"] == "x"
    assert list(doc)[:7] == ["format", "version", "dataset", "ways", "shots", "queries", "seed"]
    back, meta = read_episodes(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in eps]
    assert meta["queries"] is None and meta["dataset"] == META["dataset"] and meta["seed"] == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.update(format="other"), "not a tinyshot episode file"),
        (lambda d: d.update(episodes=[]), "non-empty list"),
        (
            lambda d: d["episodes"][0].update(support=[["1"]]),
            "one non-empty list of item ids per class",
        ),
        (lambda d: d["episodes"][0].update(classes=["a", "a"]), "listed twice"),
        (lambda d: d["episodes"][0].update(query=[[1], [2]]), '"query" must hold'),
        (lambda d: d["episodes"][0].update(seed="x"), '"seed" must be an integer'),
    ],
)
def test_bad_episode_files(tmp_path: Path, mutate, message: str):
    path = write_episodes(
        tmp_path / "e.json",
        [Episode(["a", "b"], [["1"], ["2"]], [["3"], ["4"]])],
        {**META, "queries": 1},
    )
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        read_episodes(path)


def test_unreadable_episode_files(tmp_path: Path):
    with pytest.raises(DataError, match="file not found"):
        read_episodes(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_episodes(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no episodes"):
        write_episodes(tmp_path / "e.json", [], META)


def test_cli_episodes_fashion_mnist_split_pair(tmp_path: Path, capsys):
    root = write_fashion_mnist(tmp_path / "fm", n_train=60, n_test=30)
    out = tmp_path / "eps.json"
    rc = main(
        [
            "episodes",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(root),
            "--split",
            "novel-train",
            "--query-split",
            "novel-test",
            "--ways",
            "3",
            "--shots",
            "2",
            "--queries",
            "all",
            "--episodes",
            "4",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "wrote 4 episodes (3-way 2-shot, 9 queries per episode)" in capsys.readouterr().out
    eps, meta = read_episodes(out)
    assert meta["dataset"]["query_split"] == "novel-test" and meta["queries"] is None
    sup, qry = episode_datasets(meta)
    assert (sup.split, qry.split) == ("novel-train", "novel-test")
    check_episodes(eps, sup, qry)  # every id resolves with the right class
    want = sample_episodes(sup, 4, 3, 2, None, 5, query_ds=qry)
    assert [e.to_dict() for e in eps] == [e.to_dict() for e in want]
    with pytest.raises(DataError, match="no item with id"):
        check_episodes(eps, qry, sup)  # swapped: supports do not exist in novel-test


def test_cli_episodes_imagefolder_and_errors(tmp_path: Path, capsys):
    for c in ("cat", "dog", "owl"):
        for i in range(4):
            write_image(tmp_path / "imgs" / c / f"{i}.png", value=i)
    out = tmp_path / "e.json"
    args = [
        "episodes",
        "--dataset",
        "imagefolder",
        "--root",
        str(tmp_path / "imgs"),
        "--out",
        str(out),
    ]
    assert main([*args, "--ways", "3", "--shots", "1", "--queries", "3", "--episodes", "2"]) == 0
    eps, meta = read_episodes(out)
    assert meta["dataset"]["split"] == "all" and len(eps) == 2
    assert all(len(q) == 3 for e in eps for q in e.query)
    capsys.readouterr()
    assert main([*args, "--ways", "5", "--shots", "1", "--queries", "1", "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinyshot episodes: error: --ways 5:") and err.count("\n") == 1
    assert main([*args, "--shots", "4", "--ways", "2"]) == 2
    assert "fewer than 19 images (4 shots + 15 queries): 'cat' (4)" in capsys.readouterr().err
    assert main([*args, "--option", "novalue"]) == 2
    assert "--option: expected KEY=VALUE" in capsys.readouterr().err
    assert main(["episodes", "--dataset", "nope", "--out", str(out)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--queries", "many"])
    assert "expected an integer or 'all'" in capsys.readouterr().err


def test_cli_datasets(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fashion-mnist"]["eval_split"] == "novel-test"
    assert "split_file" in rows["cub"]["options"] and rows["cub"]["needs_root"]
    assert main(["datasets"]) == 0
    assert "glyphs" in capsys.readouterr().out


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_cli_episodes_on_the_real_fashion_mnist(tmp_path: Path, capsys):
    out = tmp_path / "fm.json"
    assert (
        main(
            [
                "episodes",
                "--dataset",
                "fashion-mnist",
                "--split",
                "novel-train",
                "--query-split",
                "novel-test",
                "--shots",
                "5",
                "--queries",
                "all",
                "--episodes",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    eps, _ = read_episodes(out)
    q = load_dataset("fashion-mnist", "novel-test")
    assert all(len(x) == 1000 for e in eps for x in e.query)  # every test image of the class
    _, lab = eps[0].query_indices(q)
    assert np.array_equal(np.bincount(lab), [1000] * 5)
