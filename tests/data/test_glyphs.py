"""Glyphs benchmark rendered from the Noto fonts: cmap parsing, splits, determinism, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from tinyshot.data import glyphs
from tinyshot.data.glyphs import (
    DEFAULT_FONT_DIR,
    font_codepoints,
    load_glyphs,
    scan_scripts,
    script_of,
)
from tinyshot.data.registry import load_dataset
from tinyshot.errors import ConfigError, DataError

pytestmark = pytest.mark.skipif(
    not (DEFAULT_FONT_DIR / "NotoSansArmenian-Regular.ttf").is_file(),
    reason="Debian package fonts-noto-core not installed",
)
TINY = dict(
    scripts=("Armenian", "Georgian", "Runic"), chars_per_script=3, samples_per_class=4, size=16
)


def _mask(font: ImageFont.FreeTypeFont, cp: int) -> bytes:
    return bytes(font.getmask(chr(cp)))


@pytest.mark.parametrize(
    "font_name, block",
    [
        ("NotoSansArmenian-Regular.ttf", range(0x530, 0x590)),  # cmap format 4
        ("NotoSansGothic-Regular.ttf", range(0x10330, 0x10350)),
    ],  # format 12 (beyond the BMP)
)
def test_cmap_agrees_with_freetype(font_name: str, block: range):
    """A code point is in our cmap exactly when FreeType draws something other than .notdef."""
    path = DEFAULT_FONT_DIR / font_name
    cps = font_codepoints(path)
    font = ImageFont.truetype(str(path), 24, layout_engine=ImageFont.Layout.BASIC)
    notdef = _mask(font, 0xE000)  # private use: never mapped in Noto
    assert 0xE000 not in cps and ord("A") not in cps
    covered = [cp for cp in block if cp in cps]
    assert len(covered) >= 20
    for cp in block:
        if cp in cps and script_of(cp) is not None:
            assert _mask(font, cp) != notdef, hex(cp)
        elif cp not in cps:
            assert _mask(font, cp) == notdef, hex(cp)


def test_script_of_unicode_names():
    assert script_of(0x531) == "ARMENIAN"  # ARMENIAN CAPITAL LETTER AYB
    assert script_of(0x10300) == "OLD ITALIC"  # OLD ITALIC LETTER A
    assert script_of(ord("a")) == "LATIN"
    assert script_of(ord("5")) is None and script_of(ord("!")) is None  # letters only
    assert script_of(0x1D400) is None  # MATHEMATICAL BOLD CAPITAL A: a style, not a script
    scripts = scan_scripts(DEFAULT_FONT_DIR)
    assert (
        "GEORGIAN MTAVRULI" not in scripts
        and 0x1C90 in scripts["GEORGIAN"]["NotoSansGeorgian-Regular.ttf"]
    )  # folded into Georgian
    assert set(scripts["ARMENIAN"]) == {
        "NotoSansArmenian-Bold.ttf",
        "NotoSansArmenian-Regular.ttf",
        "NotoSerifArmenian-Bold.ttf",
        "NotoSerifArmenian-Regular.ttf",
    }


def test_tiny_benchmark_splits_and_cache(tmp_path: Path, monkeypatch):
    bg = load_glyphs("background", cache_dir=tmp_path, **TINY)
    ev = load_glyphs("evaluation", cache_dir=tmp_path, **TINY)
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1  # one render serves both splits
    assert bg.num_classes == 6 and ev.num_classes == 3  # 3 scripts: 2 background, 1 evaluation
    scripts_bg, scripts_ev = set(bg.class_scripts), set(ev.class_scripts)
    assert scripts_bg | scripts_ev == {"Armenian", "Georgian", "Runic"}
    assert not scripts_bg & scripts_ev
    assert bg.images.shape == (24, 16, 16) and bg.images.dtype == np.uint8
    assert np.bincount(bg.labels).tolist() == [4] * 6
    name = bg.class_names[0]
    assert name.split("/")[1].startswith("U+") and bg.item_id(0) == f"{name}/0"
    assert bg.load_image(3).mode == "RGB"
    # black glyph on white: white border, real ink
    assert bg.images[:, 0, :].mean() > 200 and (bg.images.min(axis=(1, 2)) < 100).all()

    # second load reads the cache: rendering is not called again
    def boom(*a, **k):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs, "render_glyph_set", boom)
    again = load_dataset(
        "glyphs",
        "background",
        cache_dir=tmp_path,
        scripts=list(TINY["scripts"]),
        chars_per_script=3,
        samples_per_class=4,
        size=16,
    )
    assert np.array_equal(again.images, bg.images) and again.class_names == bg.class_names
    with pytest.raises(AssertionError, match="rendered again"):
        load_glyphs("background", cache_dir=tmp_path, **{**TINY, "seed": 1})  # new key


def test_deterministic_from_seed_and_jittered(tmp_path: Path):
    a = load_glyphs("all", cache_dir=tmp_path / "a", **TINY)
    b = load_glyphs("all", cache_dir=tmp_path / "b", **TINY)
    c = load_glyphs("all", cache_dir=tmp_path / "c", **{**TINY, "seed": 5})
    assert np.array_equal(a.images, b.images) and a.class_names == b.class_names
    assert not np.array_equal(a.images, c.images)
    x = a.images.astype(np.float64) / 255
    flat = x.reshape(len(x), -1)
    d = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    same = a.labels[:, None] == a.labels[None]
    off_diag = ~np.eye(len(x), dtype=bool)
    within, between = d[same & off_diag], d[~same]
    assert within.min() > 0  # every sample is a different rendering
    assert within.mean() < between.mean()  # but a class is still its character


def test_glyphs_bad_inputs(tmp_path: Path):
    (tmp_path / "fonts").mkdir()
    with pytest.raises(DataError, match=r"fonts: no \.ttf/\.otf fonts"):
        load_glyphs("background", root=tmp_path / "fonts", cache_dir=tmp_path)
    (tmp_path / "fonts" / "Broken-Regular.ttf").write_bytes(b"\0\1\0\0 nonsense")
    with pytest.raises(DataError, match=r"need 2|fewer than 2"):
        load_glyphs("background", root=tmp_path / "fonts", cache_dir=tmp_path)
    with pytest.raises(DataError, match="font folder not found"):
        load_glyphs("background", root=tmp_path / "nofonts", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no script 'Klingon'"):
        load_glyphs("background", cache_dir=tmp_path, scripts=("Armenian", "Klingon"))
    with pytest.raises(ConfigError, match="unknown option"):
        load_glyphs("background", cache_dir=tmp_path, colour="red")
    with pytest.raises(ConfigError, match="samples_per_class must be >= 1"):
        load_glyphs("background", cache_dir=tmp_path, samples_per_class=0)
    with pytest.raises(DataError, match="glyphs split must be one of"):
        load_glyphs("novel", cache_dir=tmp_path)
