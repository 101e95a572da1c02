"""Generation: determinism, resume after a kill, artifact reload, baselines, store, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyshot.diffusion import store as store_mod
from tinyshot.diffusion.artifacts import load_artifacts
from tinyshot.diffusion.generate import DAFUSION_STRENGTHS, generate
from tinyshot.diffusion.store import ImageStore
from tinyshot.errors import ConfigError, DataError


def _pixels(store: ImageStore) -> dict[tuple[int, int], bytes]:
    return {(it.class_index, int(it.path.stem)): it.path.read_bytes() for it in store.items()}


def test_same_seed_same_images_other_seed_other_images(tint_specialized, tmp_path):
    s = tint_specialized
    kw = dict(n_per_class=3, batch_size=4, alpha=1.0)
    a = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "a", seed=3, **kw)
    b = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "b", seed=3, **kw)
    c = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "c", seed=4, **kw)
    assert len(a) == 6 and _pixels(a) == _pixels(b)
    pa, pc = _pixels(a), _pixels(c)
    assert all(pa[k] != pc[k] for k in pa)
    # reloaded artifacts generate bit-identical images
    d = generate(s.model, load_artifacts(s.out_dir), "tint", out_dir=tmp_path / "d", seed=3, **kw)
    assert _pixels(d) == pa


def test_resume_after_kill_gives_the_identical_set(tint_specialized, tmp_path, monkeypatch):
    s = tint_specialized
    kw = dict(n_per_class=4, batch_size=3, seed=5, alpha=0.7)
    full = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "full", **kw)
    real = store_mod.ImageStore.write
    calls = {"n": 0}

    def dies_in_third_batch(self, records, images):
        calls["n"] += 1
        if calls["n"] == 3:  # PNGs written, manifest not yet: the worst moment
            for rec, arr in zip(records, images):
                store_mod.atomic_write(
                    self.root / rec["path"], lambda p, a=arr: p.write_bytes(b"junk")
                )
            raise KeyboardInterrupt
        return real(self, records, images)

    monkeypatch.setattr(store_mod.ImageStore, "write", dies_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "part", **kw)
    assert len(ImageStore(tmp_path / "part")) == 6
    # a torn manifest line (killed mid-append) is ignored
    with open(tmp_path / "part" / "manifest.jsonl", "a") as f:
        f.write('{"class_index": 1, "ind')
    monkeypatch.setattr(store_mod.ImageStore, "write", real)
    resumed = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "part", **kw)
    assert len(resumed) == 8
    keys = [(r["class_index"], r["index"]) for r in resumed.records()]
    assert len(keys) == len(set(keys)) == 8
    assert _pixels(resumed) == _pixels(full)
    assert [it[1:] for it in resumed.items()] == [it[1:] for it in full.items()]
    # running it again does nothing and changes nothing
    again = generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "part", **kw)
    assert _pixels(again) == _pixels(full)
    with pytest.raises(ConfigError, match="alpha"):
        generate(s.model, s.artifacts, "tint", out_dir=tmp_path / "part", **{**kw, "alpha": 0.5})


def test_store_items_and_loaders(tint_specialized, tmp_path):
    s = tint_specialized
    st = generate(s.model, s.artifacts, "tint", 2, tmp_path / "g", alpha=0.25, batch_size=8, seed=9)
    items = st.items()
    assert len(items) == 4
    path, cls, sup, seed, alpha = items[0]
    assert path.is_file() and cls == 0 and sup in (0, 1) and alpha == 0.25 and seed > 0
    assert [it.class_index for it in items] == [0, 0, 1, 1]
    imgs = st.load_images(class_index=1)
    assert len(imgs) == 2 and imgs[0].size == (32, 32) and imgs[0].mode == "RGB"
    x, y = st.load_tensor()
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert st.class_names == s.names
    assert json.loads((tmp_path / "g" / "generation.json").read_text())["method"] == "tint"
    with pytest.raises(DataError, match="not an image store"):
        ImageStore(tmp_path / "nothing")


def test_baselines_share_the_interface(tint_specialized, tmp_path):
    s = tint_specialized
    ti = generate(s.model, s.artifacts, "ti", 2, tmp_path / "ti", batch_size=4, seed=2)
    da = generate(s.model, s.artifacts, "dafusion", 3, tmp_path / "da", batch_size=4, seed=2)
    tint = generate(s.model, s.artifacts, "tint", 2, tmp_path / "tint", batch_size=4, seed=2)
    assert all(r["support_index"] is None and r["alpha"] is None for r in ti.records())
    recs = da.records()
    assert all(r["strength"] in DAFUSION_STRENGTHS and r["support_index"] in (0, 1) for r in recs)
    # TI and TINT share each image's noise (paired comparison) but not their images
    assert [r["seed"] for r in ti.records()] == [r["seed"] for r in tint.records()]
    assert _pixels(ti) != _pixels(tint)
    # DA-Fusion at a low strength stays close to its support image, TI does not
    x_da, _ = da.load_tensor()
    x_ti, _ = ti.load_tensor()
    sup = {
        (a.class_index, k): s.model.decode(a.support_latents[k : k + 1])[0]
        for a in s.artifacts
        for k in range(a.num_support)
    }
    low = [
        float(((x_da[i] - sup[(r["class_index"], r["support_index"])]) ** 2).mean())
        for i, r in enumerate(recs)
        if r["strength"] == 0.25
    ]
    far = [min(float(((x_ti[i] - v) ** 2).mean()) for v in sup.values()) for i in range(len(x_ti))]
    assert low and max(low) < min(far)


def test_generate_rejects_bad_settings(tint_specialized, tmp_path):
    s = tint_specialized
    m, arts = s.model, s.artifacts
    with pytest.raises(ConfigError, match="alpha must be in"):
        generate(m, arts, "tint", 1, tmp_path / "x", alpha=1.5)
    with pytest.raises(ConfigError, match="method"):
        generate(m, arts, "nao", 1, tmp_path / "x")
    with pytest.raises(ConfigError, match="DDIM steps"):
        generate(m, arts, "tint", 1, tmp_path / "x", steps=20)
    with pytest.raises(ConfigError, match="guidance"):
        generate(m, arts, "tint", 1, tmp_path / "x", guidance=3.0)
    with pytest.raises(ConfigError, match="n_per_class"):
        generate(m, arts, "tint", 0, tmp_path / "x")
    # TI and DA-Fusion may use other steps and guidance
    st = generate(m, arts, "ti", 1, tmp_path / "y", steps=4, guidance=3.0)
    assert len(st) == 2 and np.isfinite(st.load_tensor()[0].numpy()).all()
    assert torch.is_tensor(st.load_tensor()[1])
