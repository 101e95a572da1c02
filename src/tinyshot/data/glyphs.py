"""Glyphs: an Omniglot-like many-class benchmark rendered from the installed Noto fonts.

Each character of a script is a class; its samples are renderings of that character from
the fonts (families, weights) of its script that contain it, each with a random affine
warp (rotation, scale, shear, translation) and a random stroke width, black on white.
Scripts are split into "background" and "evaluation" like Omniglot's alphabets, so
evaluation classes come from scripts never seen in training.

A font's characters come from its cmap table (parsed here, no extra dependency); a
character belongs to the script its Unicode name starts with ("ARMENIAN CAPITAL LETTER
AYB" -> Armenian), letters only. Everything is a function of the config and its seed;
the rendered arrays are cached as .npz keyed by every parameter, the font files and the
Pillow/FreeType versions, so the second load is a file read.
"""

from __future__ import annotations

import hashlib
import json
import struct
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tinyshot.data.base import ArrayDataset
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write
from tinyshot.utils.logging import get_logger, progress
from tinyshot.utils.seed import derive_seed

log = get_logger("data.glyphs")

DEFAULT_FONT_DIR = Path("/usr/share/fonts/truetype/noto")
CACHE_FORMAT = 1
SPLITS = ("background", "evaluation", "all")
SPLIT_ALIASES = {"train": "background", "test": "evaluation"}
FONT_SUFFIXES = (".ttf", ".otf")
# Words that end the script part of a Unicode character name.
_STOP_WORDS = {
    "LETTER",
    "CAPITAL",
    "SMALL",
    "SYLLABLE",
    "SYLLABICS",
    "CHARACTER",
    "SIGN",
    "IDEOGRAPH",
    "HIEROGLYPH",
    "DIGIT",
    "VOWEL",
    "CONSONANT",
    "LIGATURE",
    "INDEPENDENT",
}
# Letter-like styles of Latin/Greek, not scripts of their own.
_EXCLUDED_PREFIXES = ("MATHEMATICAL", "DOUBLE-STRUCK", "SCRIPT", "BLACK-LETTER", "MODIFIER")
_EXCLUDED = {"VEDIC"}


@dataclass(frozen=True)
class GlyphsConfig:
    """Everything the rendering depends on; the defaults render in a few seconds."""

    size: int = 32  # output side in pixels
    samples_per_class: int = 20  # like Omniglot's 20 drawers
    max_scripts: int | None = 30  # None: every script with >= min_chars letters
    chars_per_script: int | None = 20  # None: every letter of the script
    min_chars: int = 10  # scripts with fewer letters are not used
    scripts: tuple[str, ...] | None = (
        None  # explicit scripts (e.g. "Armenian"); overrides max_scripts
    )
    background_fraction: float = 0.7
    rotation: float = 15.0  # max |degrees|
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 0.2  # max |x-shear|
    translate: float = 0.08  # max |shift| as a fraction of the side
    stroke: tuple[float, float] = (0.0, 0.035)  # extra stroke width as a fraction of the em
    fill: float = 0.65  # longest glyph side at scale 1, as a fraction of the side
    seed: int = 0

    def check(self) -> None:
        if self.size < 8:
            raise ConfigError(f"glyphs size must be >= 8 px, got {self.size}")
        if self.samples_per_class < 1:
            raise ConfigError(
                f"glyphs samples_per_class must be >= 1, got {self.samples_per_class}"
            )
        if self.chars_per_script is not None and self.chars_per_script < 1:
            raise ConfigError(f"glyphs chars_per_script must be >= 1, got {self.chars_per_script}")
        if self.max_scripts is not None and self.max_scripts < 2:
            raise ConfigError(f"glyphs max_scripts must be >= 2, got {self.max_scripts}")
        if not 0.0 < self.background_fraction < 1.0:
            raise ConfigError(
                f"glyphs background_fraction must lie in (0, 1), got {self.background_fraction}"
            )
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"glyphs scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")
        if not 0 <= self.stroke[0] <= self.stroke[1] < 0.5:
            raise ConfigError(f"glyphs stroke must be (lo, hi) in [0, 0.5), got {self.stroke}")


# ---------------------------------------------------------------------------- fonts


def font_codepoints(path: str | Path) -> set[int]:
    """Code points the font maps to a real glyph (not .notdef), from its cmap table."""
    path = Path(path)
    try:
        data = path.read_bytes()
        num_tables = struct.unpack_from(">H", data, 4)[0]
        tables = {}
        for i in range(num_tables):
            tag, _, off, length = struct.unpack_from(">4sIII", data, 12 + 16 * i)
            tables[tag] = (off, length)
        if b"cmap" not in tables:
            raise DataError(f"{path}: font has no cmap table")
        base = tables[b"cmap"][0]
        _, n_sub = struct.unpack_from(">HH", data, base)
        subtables = {}
        for i in range(n_sub):
            plat, enc, off = struct.unpack_from(">HHI", data, base + 4 + 8 * i)
            subtables[(plat, enc)] = base + off
        for key in ((3, 10), (0, 6), (0, 4), (0, 3), (3, 1), (0, 1), (0, 0)):
            if key not in subtables:
                continue
            off = subtables[key]
            fmt = struct.unpack_from(">H", data, off)[0]
            if fmt == 12:
                return _cmap12(data, off)
            if fmt == 4:
                return _cmap4(data, off)
    except (OSError, struct.error) as e:
        raise DataError(f"{path}: not a readable TrueType/OpenType font ({e})") from e
    raise DataError(f"{path}: font has no Unicode cmap subtable of format 4 or 12")


def _cmap12(data: bytes, off: int) -> set[int]:
    n_groups = struct.unpack_from(">I", data, off + 12)[0]
    out: set[int] = set()
    for g in range(n_groups):
        start, end, gid = struct.unpack_from(">III", data, off + 16 + 12 * g)
        out.update(c for c in range(start, min(end, 0x10FFFF) + 1) if gid + c - start)
    return out


def _cmap4(data: bytes, off: int) -> set[int]:
    seg = struct.unpack_from(">H", data, off + 6)[0] // 2
    ends = struct.unpack_from(f">{seg}H", data, off + 14)
    starts = struct.unpack_from(f">{seg}H", data, off + 16 + 2 * seg)
    deltas = struct.unpack_from(f">{seg}h", data, off + 16 + 4 * seg)
    ro_base = off + 16 + 6 * seg
    range_offsets = struct.unpack_from(f">{seg}H", data, ro_base)
    out: set[int] = set()
    for i in range(seg):
        for c in range(starts[i], ends[i] + 1):
            if c == 0xFFFF:
                continue
            if range_offsets[i] == 0:
                gid = (c + deltas[i]) & 0xFFFF
            else:
                addr = ro_base + 2 * i + range_offsets[i] + 2 * (c - starts[i])
                gid = struct.unpack_from(">H", data, addr)[0]
                gid = (gid + deltas[i]) & 0xFFFF if gid else 0
            if gid:
                out.add(c)
    return out


def script_of(cp: int) -> str | None:
    """'ARMENIAN' for U+0531 ARMENIAN CAPITAL LETTER AYB; None for non-letters."""
    ch = chr(cp)
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lo"):
        return None
    try:
        words = unicodedata.name(ch).split()
    except ValueError:
        return None
    head: list[str] = []
    for w in words:
        if w in _STOP_WORDS or w.split("-")[0] in _STOP_WORDS:
            break
        head.append(w)
    key = " ".join(head) if head else words[0]
    if key in _EXCLUDED or key.startswith(_EXCLUDED_PREFIXES):
        return None
    return key


def script_display(key: str) -> str:
    return key.title()


def scan_scripts(font_dir: str | Path, min_chars: int = 10) -> dict[str, dict[str, set[int]]]:
    """script key -> {font file name -> letters of that script in the font}.

    A sub-script ("GEORGIAN MTAVRULI") folds into the script it extends ("GEORGIAN").
    """
    font_dir = Path(font_dir).expanduser()
    if not font_dir.is_dir():
        raise DataError(
            f"{font_dir}: font folder not found (apt-get install fonts-noto-core, "
            "or pass root=<folder with Noto .ttf files>)"
        )
    fonts = sorted(p for p in font_dir.iterdir() if p.suffix.lower() in FONT_SUFFIXES)
    if not fonts:
        raise DataError(f"{font_dir}: no .ttf/.otf fonts in this folder")
    per_font: dict[str, dict[str, set[int]]] = {}
    for p in fonts:
        try:
            cps = font_codepoints(p)
        except DataError as e:
            log.warning("skipping font %s", e)
            continue
        groups: dict[str, set[int]] = defaultdict(set)
        for cp in cps:
            key = script_of(cp)
            if key is not None:
                groups[key].add(cp)
        per_font[p.name] = groups
    keys = {k for g in per_font.values() for k in g}
    parent = {}
    for k in keys:
        words = k.split()
        for n in range(len(words) - 1, 0, -1):
            if " ".join(words[:n]) in keys:
                parent[k] = " ".join(words[:n])
                break
    scripts: dict[str, dict[str, set[int]]] = defaultdict(dict)
    for fname, groups in per_font.items():
        merged: dict[str, set[int]] = defaultdict(set)
        for k, cps in groups.items():
            merged[parent.get(k, k)] |= cps
        for k, cps in merged.items():
            if len(cps) >= min_chars:
                scripts[k][fname] = cps
    return dict(sorted(scripts.items()))


@lru_cache(maxsize=64)
def _font(path: str, em: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, em, layout_engine=ImageFont.Layout.BASIC)


# ---------------------------------------------------------------------------- rendering


def _glyph_crop(ch: str, font: ImageFont.FreeTypeFont, stroke: int) -> Image.Image | None:
    """The character's ink, cropped; None when the font draws nothing for it."""
    left, top, right, bottom = font.getbbox(ch, stroke_width=stroke)
    if right <= left or bottom <= top:
        return None
    pad = 2 + stroke
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(img).text(
        (pad - left, pad - top), ch, font=font, fill=0, stroke_width=stroke, stroke_fill=0
    )
    box = ImageOps.invert(img).getbbox()
    return img.crop(box) if box else None


def render_glyph(
    ch: str, font_path: str | Path, cfg: GlyphsConfig, rng: np.random.Generator | None
) -> np.ndarray | None:
    """One (size, size) uint8 rendering; rng=None gives the undistorted glyph."""
    work = 2 * cfg.size  # render at 2x, then box-filter down: smooth edges
    font = _font(str(font_path), work)
    if rng is None:
        stroke, theta, s, sh, tx, ty = 0, 0.0, 1.0, 0.0, 0.0, 0.0
    else:
        stroke = round(rng.uniform(*cfg.stroke) * work)
        theta = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation))
        s = rng.uniform(*cfg.scale)
        sh = rng.uniform(-cfg.shear, cfg.shear)
        tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * work
    glyph = _glyph_crop(ch, font, stroke)
    if glyph is None:
        return None
    gw, gh = glyph.size
    k = cfg.fill * work * s / max(gw, gh)
    c, si = np.cos(theta), np.sin(theta)
    a = np.array([[c, -si], [si, c]]) @ np.array([[1.0, sh], [0.0, 1.0]]) * k
    m = np.linalg.inv(a)  # output -> input, as Image.transform wants
    cx, cy = work / 2 + tx, work / 2 + ty
    data = (
        m[0, 0],
        m[0, 1],
        gw / 2 - m[0, 0] * cx - m[0, 1] * cy,
        m[1, 0],
        m[1, 1],
        gh / 2 - m[1, 0] * cx - m[1, 1] * cy,
    )
    out = glyph.transform(
        (work, work), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=255
    )
    return np.asarray(out.resize((cfg.size, cfg.size), Image.Resampling.BOX), dtype=np.uint8)


@dataclass
class GlyphSet:
    """All rendered classes of a config, both splits; what the cache file holds."""

    images: np.ndarray  # (N, size, size) uint8
    labels: np.ndarray  # class index per image
    class_names: list[str]  # "<Script>/U+XXXX"
    class_scripts: list[str]
    script_split: dict[str, str]  # script -> "background" | "evaluation"
    class_fonts: list[list[str]] = field(default_factory=list)


def _select_scripts(available: list[str], cfg: GlyphsConfig) -> list[str]:
    if cfg.scripts:
        by_name = {k.casefold(): k for k in available}
        by_name.update({script_display(k).casefold(): k for k in available})
        chosen = []
        for s in cfg.scripts:
            key = by_name.get(str(s).casefold().replace("_", " "))
            if key is None:
                raise ConfigError(
                    f"glyphs: no script {s!r} in the fonts (have "
                    f"{', '.join(script_display(k) for k in available)})"
                )
            if key not in chosen:
                chosen.append(key)
        if len(chosen) < 2:
            raise ConfigError("glyphs: need at least 2 scripts (one per split)")
        return sorted(chosen)
    if len(available) < 2:
        raise DataError(f"glyphs: only {len(available)} usable script(s) in the fonts; need 2")
    if cfg.max_scripts is None or len(available) <= cfg.max_scripts:
        return list(available)
    rng = np.random.default_rng(derive_seed(cfg.seed, "glyphs-scripts"))
    pick = rng.choice(len(available), size=cfg.max_scripts, replace=False)
    return sorted(available[i] for i in pick)


def render_glyph_set(cfg: GlyphsConfig, font_dir: str | Path = DEFAULT_FONT_DIR) -> GlyphSet:
    cfg.check()
    font_dir = Path(font_dir).expanduser()
    scripts = scan_scripts(font_dir, cfg.min_chars)
    chosen = _select_scripts(list(scripts), cfg)
    # choose characters: seeded order, keep those some font really draws, drop look-alikes
    classes: list[tuple[str, int, list[str]]] = []
    for key in chosen:
        fonts_of = scripts[key]
        cands = sorted(set().union(*fonts_of.values()))
        rng = np.random.default_rng(derive_seed(cfg.seed, "glyphs-chars", key))
        seen: set[bytes] = set()
        n = 0
        for i in rng.permutation(len(cands)):
            if cfg.chars_per_script is not None and n >= cfg.chars_per_script:
                break
            cp = int(cands[i])
            fonts = []
            first = None
            for fname in sorted(f for f, cps in fonts_of.items() if cp in cps):
                plain = render_glyph(chr(cp), font_dir / fname, cfg, None)
                if plain is not None and plain.min() < 128:
                    fonts.append(fname)
                    first = plain if first is None else first
            if first is None:
                continue
            digest = hashlib.sha1((first < 128).tobytes()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            classes.append((key, cp, fonts))
            n += 1
        if n < 2:
            log.warning("glyphs: script %s has fewer than 2 drawable letters; dropped", key)
            classes = [c for c in classes if c[0] != key]
    used = sorted({c[0] for c in classes})
    if len(used) < 2:
        raise DataError(f"{font_dir}: fewer than 2 scripts with drawable letters")
    order = np.random.default_rng(derive_seed(cfg.seed, "glyphs-split")).permutation(len(used))
    n_bg = min(max(round(cfg.background_fraction * len(used)), 1), len(used) - 1)
    script_split = {
        used[j]: ("background" if r < n_bg else "evaluation") for r, j in enumerate(order)
    }
    k = cfg.samples_per_class
    images = np.empty((len(classes) * k, cfg.size, cfg.size), dtype=np.uint8)
    for ci, (key, cp, fonts) in enumerate(
        progress(classes, desc="rendering glyphs", total=len(classes))
    ):
        rng = np.random.default_rng(derive_seed(cfg.seed, "glyphs-render", key, cp))
        offset = int(rng.integers(len(fonts)))
        for j in range(k):
            fname = fonts[(offset + j) % len(fonts)]
            img = None
            for _ in range(8):  # a heavy stroke can make a tiny glyph vanish; redraw
                img = render_glyph(chr(cp), font_dir / fname, cfg, rng)
                if img is not None:
                    break
            if img is None:
                img = render_glyph(chr(cp), font_dir / fname, cfg, None)
            images[ci * k + j] = img
    return GlyphSet(
        images=images,
        labels=np.repeat(np.arange(len(classes), dtype=np.int64), k),
        class_names=[f"{script_display(key)}/U+{cp:04X}" for key, cp, _ in classes],
        class_scripts=[script_display(key) for key, _, _ in classes],
        script_split={script_display(s): v for s, v in script_split.items()},
        class_fonts=[fonts for _, _, fonts in classes],
    )


# ---------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    from tinyshot.utils.paths import cache_dir

    return cache_dir() / "glyphs"


def cache_key(cfg: GlyphsConfig, font_dir: str | Path) -> str:
    from PIL import __version__ as pil_version
    from PIL import features

    font_dir = Path(font_dir).expanduser()
    fonts = []
    if font_dir.is_dir():
        fonts = sorted(
            (p.name, p.stat().st_size)
            for p in font_dir.iterdir()
            if p.suffix.lower() in FONT_SUFFIXES
        )
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "config": asdict(cfg),
            "fonts": fonts,
            "font_dir": str(font_dir.resolve()) if font_dir.is_dir() else str(font_dir),
            "pillow": pil_version,
            "freetype": features.version("freetype2"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save(path: Path, gs: GlyphSet, cfg: GlyphsConfig) -> None:
    meta = {
        "format": CACHE_FORMAT,
        "config": asdict(cfg),
        "class_names": gs.class_names,
        "class_scripts": gs.class_scripts,
        "script_split": gs.script_split,
        "class_fonts": gs.class_fonts,
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=gs.images, labels=gs.labels, meta=json.dumps(meta))

    atomic_write(path, write)


def _load(path: Path) -> GlyphSet:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return GlyphSet(
            images=z["images"],
            labels=z["labels"].astype(np.int64),
            class_names=meta["class_names"],
            class_scripts=meta["class_scripts"],
            script_split=meta["script_split"],
            class_fonts=meta["class_fonts"],
        )


def glyph_set(
    cfg: GlyphsConfig,
    font_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
) -> GlyphSet:
    """The rendered set for cfg, from the cache when present (rendered and cached otherwise)."""
    font_dir = Path(font_dir).expanduser() if font_dir is not None else DEFAULT_FONT_DIR
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"glyphs-{cache_key(cfg, font_dir)}.npz"
    if path.is_file() and not refresh:
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            log.warning("glyphs cache %s unreadable (%s); rendering again", path, e)
    gs = render_glyph_set(cfg, font_dir)
    try:
        _save(path, gs, cfg)
        log.info(
            "glyphs: cached %d images of %d classes in %s",
            len(gs.images),
            len(gs.class_names),
            path,
        )
    except OSError as e:
        log.warning("glyphs: could not write cache %s (%s)", path, e)
    return gs


def load_glyphs(
    split: str = "background",
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    **config: object,
) -> ArrayDataset:
    """One split of the Glyphs benchmark; `root` is the font folder, `config` GlyphsConfig fields."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DataError(
            f"glyphs split must be one of {', '.join(SPLITS)} (or train/test), got {split!r}"
        )
    names = set(GlyphsConfig.__dataclass_fields__)
    unknown = sorted(set(config) - names)
    if unknown:
        raise ConfigError(f"glyphs: unknown option(s) {unknown}; known: {sorted(names)}")
    for k in ("scale", "stroke", "scripts"):
        if k in config and config[k] is not None:
            config[k] = tuple(config[k])  # type: ignore[arg-type]
    if isinstance(config.get("scripts"), tuple) and len(config["scripts"]) == 0:  # type: ignore[arg-type]
        config["scripts"] = None
    cfg = replace(GlyphsConfig(), **config)  # type: ignore[arg-type]
    cfg.check()
    gs = glyph_set(cfg, root, cache_dir, refresh)
    if split == "all":
        keep_classes = list(range(len(gs.class_names)))
    else:
        keep_classes = [
            i for i, s in enumerate(gs.class_scripts) if gs.script_split.get(s) == split
        ]
    lut = np.full(len(gs.class_names), -1, dtype=np.int64)
    lut[keep_classes] = np.arange(len(keep_classes))
    keep = np.flatnonzero(lut[gs.labels] >= 0)
    k = cfg.samples_per_class
    ids = [f"{gs.class_names[gs.labels[i]]}/{int(i) % k}" for i in keep]
    ds = ArrayDataset(
        gs.images[keep],
        lut[gs.labels[keep]],
        [gs.class_names[i] for i in keep_classes],
        "glyphs",
        split,
        ids=ids,
    )
    ds.class_scripts = [gs.class_scripts[i] for i in keep_classes]  # type: ignore[attr-defined]
    ds.config = cfg  # type: ignore[attr-defined]
    return ds
