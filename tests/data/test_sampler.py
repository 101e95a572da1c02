"""Episode sampling: shapes, disjointness, seeding, split pairs and constraint errors."""

from __future__ import annotations

import numpy as np
import pytest

from tinyshot.data.base import ArrayDataset, remap_classes
from tinyshot.data.sampler import sample_episode, sample_episodes
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.seed import derive_seed


def make_ds(
    counts: list[int], split: str = "train", names: list[str] | None = None
) -> ArrayDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((len(labels), 8, 8), dtype=np.uint8)
    names = names or [f"c{i}" for i in range(len(counts))]
    ids = [f"{split}-{i}" for i in range(len(labels))]
    return ArrayDataset(images, labels, names, "toy", split, ids=ids)


def test_episode_shapes_labels_and_disjoint_sets():
    ds = make_ds([20] * 8)
    ep = sample_episode(ds, ways=5, shots=3, queries=4, seed=1)
    assert ep.ways == 5 and ep.shots == 3 and len(set(ep.classes)) == 5
    assert [len(q) for q in ep.query] == [4] * 5
    s_idx, s_lab = ep.support_indices(ds)
    q_idx, q_lab = ep.query_indices(ds)
    assert len(s_idx) == 15 and len(q_idx) == 20
    assert not set(s_idx) & set(q_idx)
    for idx, lab in ((s_idx, s_lab), (q_idx, q_lab)):
        # episode-local label k is the dataset class named ep.classes[k]
        assert all(ds.class_names[ds.labels[i]] == ep.classes[k] for i, k in zip(idx, lab))


def test_all_remaining_queries():
    ds = make_ds([7, 9, 12])
    ep = sample_episode(ds, ways=3, shots=2, queries=None, seed=0)
    sizes = {c: len(q) for c, q in zip(ep.classes, ep.query)}
    assert sizes == {"c0": 5, "c1": 7, "c2": 10}


def test_seeding_and_prefix_stability():
    ds = make_ds([30] * 10)
    a = sample_episodes(ds, 5, ways=3, shots=2, queries=5, seed=7)
    b = sample_episodes(ds, 8, ways=3, shots=2, queries=5, seed=7)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b[:5]]  # more episodes: same start
    assert a[2].to_dict() == sample_episode(ds, 3, 2, 5, seed=derive_seed(7, 2)).to_dict()
    c = sample_episodes(ds, 5, ways=3, shots=2, queries=5, seed=8)
    assert [e.to_dict() for e in a] != [e.to_dict() for e in c]
    assert len({tuple(e.classes) for e in b}) > 1  # episodes differ from each other


def test_class_draw_is_uniform():
    ds = make_ds([5] * 10)
    eps = sample_episodes(ds, 2000, ways=2, shots=1, queries=1, seed=0)
    counts = np.bincount([ds.class_id(c) for e in eps for c in e.classes], minlength=10)
    # each class is drawn with p = 0.2 per episode: 400 +- 3 sd (sd ~ 17.9)
    assert np.all(np.abs(counts - 400) < 60), counts


def test_explicit_classes():
    ds = make_ds([6] * 6)
    ep = sample_episode(ds, 2, 1, 2, seed=3, classes=["c4", 1])
    assert sorted(ep.classes) == ["c1", "c4"]
    with pytest.raises(DataError, match="no class named 'zz'"):
        sample_episode(ds, 2, 1, 2, seed=3, classes=["zz", "c1"])
    with pytest.raises(ConfigError, match="class 'c1' given twice"):
        sample_episode(ds, 2, 1, 2, seed=3, classes=["c1", 1])


def test_supports_and_queries_from_different_splits():
    sup = make_ds([10, 10, 10], "novel-train", names=["a", "b", "c"])
    qry = make_ds([4, 5, 6, 7], "novel-test", names=["c", "b", "a", "d"])
    eps = sample_episodes(sup, 4, ways=3, shots=2, queries=None, seed=0, query_ds=qry)
    for ep in eps:
        assert all(i.startswith("novel-train-") for s in ep.support for i in s)
        assert {c: len(q) for c, q in zip(ep.classes, ep.query)} == {"a": 6, "b": 5, "c": 4}
        q_idx, q_lab = ep.query_indices(qry)
        assert all(qry.class_names[qry.labels[i]] == ep.classes[k] for i, k in zip(q_idx, q_lab))
    ep = sample_episode(sup, 3, 2, 3, seed=1, query_ds=qry)
    assert [len(q) for q in ep.query] == [3, 3, 3]
    with pytest.raises(
        ConfigError, match=r"toy/novel-test: class\(es\) with fewer than 5 images.*'c' \(4\)"
    ):
        sample_episode(sup, 3, 2, 5, seed=1, query_ds=qry)
    with pytest.raises(ConfigError, match="only 3 shared class"):
        sample_episode(sup, 4, 2, 1, seed=1, query_ds=qry)


def test_constraint_errors_name_the_class_or_option():
    ds = make_ds([10, 3, 10], names=["cat", "dog", "owl"])
    with pytest.raises(ConfigError, match=r"--ways 4: toy/train has only 3 class"):
        sample_episode(ds, 4, 1, 1, seed=0)
    with pytest.raises(
        ConfigError, match=r"fewer than 4 images \(2 shots \+ 2 queries\): 'dog' \(3\)"
    ):
        sample_episode(ds, 2, 2, 2, seed=0)
    with pytest.raises(
        ConfigError, match=r"fewer than 4 images \(3 shots \+ at least 1 query\): 'dog'"
    ):
        sample_episode(ds, 2, 3, None, seed=0)  # "all" needs K+1 images
    with pytest.raises(
        ConfigError, match=r"fewer than 11 images.*'cat' \(10\), 'dog' \(3\), 'owl'"
    ):
        sample_episode(ds, 2, 10, None, seed=0)
    for kw, opt in (
        (dict(ways=0), "--ways"),
        (dict(shots=0), "--shots"),
        (dict(queries=0), "--queries"),
    ):
        args = dict(ways=2, shots=1, queries=1) | kw
        with pytest.raises(ConfigError, match=opt):
            sample_episode(ds, seed=0, **args)
    with pytest.raises(ConfigError, match="--episodes must be >= 1"):
        sample_episodes(ds, 0, 2, 1, 1, seed=0)
    ok = sample_episode(ds, 2, 2, 1, seed=0, classes=["cat", "owl"])  # dog excluded: fine
    assert sorted(ok.classes) == ["cat", "owl"]


def test_remap_classes_view_keeps_ids():
    ds = make_ds([3, 4, 5], names=["a", "b", "c"])
    view = remap_classes(ds, [2, 0], split="sub")
    assert view.class_names == ["c", "a"] and view.split == "sub" and len(view) == 8
    assert np.bincount(view.labels).tolist() == [5, 3]
    assert view.item_id(0) == "train-0" and view.labels[0] == 1
    ep = sample_episode(view, 2, 1, 1, seed=0)
    assert ep.support_indices(ds)[0].shape == (2,)  # the episode also resolves on the original
    with pytest.raises(DataError, match="class id 3 out of range"):
        remap_classes(ds, [3])
    with pytest.raises(DataError, match="duplicate class name 'a'"):
        ArrayDataset(np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), ["a", "a"], "toy", "x")
