"""fit's default teacher, chosen on real images that are not Fashion-MNIST (issue 33, item 3).

Scores candidate offline teachers (ProtoNets on EfficientNet-Lite members at 96-260 px, and
with the base-pretrained student where a base set exists) on four check sets of 5-way 5-shot
episodes, and times each member on this CPU in the same run:

* **emoji-64**: Noto Emoji colour drawings (npm `emoji-datasource-google` 16.0.0, its 64 px
  PNGs, alpha composited on white as `fit` reads user images). A class is one of 27 fixed
  Unicode subcategories of animals, plants, food, transport, places, activities and objects
  (each with >= 12 emoji of Emoji <= 15.0: mammal, bird, fruit, clothing, tool, ...); its
  images are different emoji of it. 200 episodes of 5 classes, 5 supports and 7 held-out
  images per class. No base set, so no `student` member: what `fit` without `--base` gets.
* **emoji-136**: the same emoji and episodes drawn at 136 px by Debian's Noto Color Emoji font
  (`fonts-noto-color-emoji`, unpacked into $TINYSHOT_CACHE with `apt-get download` and
  `dpkg -x`, never installed: the glyph benchmark scans the system's Noto folder). Larger than
  the 96 px teacher view, as a user's images are: a teacher sized 96 sees them shrunk.
* **glyphs**: the Noto glyph benchmark's evaluation split (`tinyshot.data.glyphs`, 32 px,
  scripts never seen by the glyph generator or student), black on white; the 5 characters
  of an episode come from one script (as Omniglot's within-alphabet episodes); 10 episodes,
  5 supports + 10 held-out per class. `student` = the shipped Conv4 pretrained on the
  background split.
* **fashion-mnist**: 8 novel-train episodes (supports and 20 held-out per class, disjoint,
  seed 1000 as in scripts/tune_teacher.py), `student` = the shipped base-pretrained Conv4.

For each candidate and episode: leave-one-out ProtoNet accuracy over the 25 supports
(`evaluation.health_figures.loo_protonet_accuracy`, the figure `fit` reports) and accuracy on the
held-out images (prototypes from the supports). Each candidate's images are the pipeline's
teacher view at the `teacher_input_size` a default would give it (`teacher_size`: 96, or its
largest member's size), so members see what they would see in `fit`. Each member's features
are extracted once per image and view through the feature cache ($TINYSHOT_CACHE/features);
every candidate is a concatenation of members (power transform, L2 per member), as
`EnsembleBackbone` computes it; all 62 (126 with `student`) subsets are scored and ranked.
Cost: CPU milliseconds per image of each member's forward pass (cache off, a batch of 32, in
the ensemble's chunks of 16, least of 3 after a warm-up, one torch thread); a candidate's cost
is the sum of its members'.

Run (about 45 min the first time on the shared 2-core CPU, mostly feature extraction, and 24
min from the warm cache, mostly scoring; the emoji package and font are fetched into
$TINYSHOT_CACHE on first use, or pass --emoji-dir / --emoji-font):

    PYTHONPATH=src python experiments/teacher_default.py --out results/teacher-default.json

It produced results/teacher-default.json (2026-12-06), summarised in docs/models.md ("fit's
default teacher"), which chose `effnet-lite-ensemble` at 240 px for `fit` without `--base`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from tinyshot.data.images import open_rgb, to_rgb
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episode, sample_episodes
from tinyshot.data.transforms import teacher_view
from tinyshot.evaluation.health_figures import loo_protonet_accuracy
from tinyshot.models.backbones import build_ensemble
from tinyshot.models.teacher import ProtoNetTeacher
from tinyshot.pipeline.task_config import bind_teacher_spec
from tinyshot.utils.paths import cache_dir
from tinyshot.utils.seed import derive_seed

EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
# Subcategories with >= 12 Google emoji images: things a user might photograph or draw
# (people, faces, flags, symbols, clocks and keycaps left out).
EMOJI_CLASSES = [
    "animal-mammal", "animal-bird", "animal-marine", "animal-bug", "plant-flower",
    "plant-other", "food-fruit", "food-vegetable", "food-prepared", "food-asian",
    "food-sweet", "drink", "transport-ground", "transport-air", "sky & weather",
    "place-building", "sport", "game", "event", "clothing", "tool", "household", "office",
    "book-paper", "light & video", "computer", "mail",
]  # fmt: skip
EMOJI_MAX_VERSION = 15.0  # emoji the Noto Color Emoji font of Debian 12 (2.042) draws
EMOJI_FONT_PACKAGE = "fonts-noto-color-emoji"
EMOJI_FONT = "NotoColorEmoji.ttf"
IMAGENET = [
    "efficientnet-lite0@96",
    "efficientnet-lite1@96",
    "efficientnet-lite0@224",
    "efficientnet-lite1@240",
    "efficientnet-lite2@260",
]
SHORT = {
    "efficientnet-lite0@96": "L0@96",
    "efficientnet-lite1@96": "L1@96",
    "efficientnet-lite0@224": "L0@224",
    "efficientnet-lite1@240": "L1@240",
    "efficientnet-lite2@260": "L2@260",
    "student": "student",
}
# The named candidates of the table: (label, members, power).
NAMED = [
    ("efficientnet-lite0 at 96 px (former default)", ["efficientnet-lite0@96"], 1.0),
    ("effnet-lite-student without its student (fit today, no --base)",
     ["efficientnet-lite0@96", "efficientnet-lite1@96"], 0.5),
    ("effnet-lite-student (with a base set)",
     ["student", "efficientnet-lite0@96", "efficientnet-lite1@96"], 0.5),
    ("efficientnet-lite0 at 224 px", ["efficientnet-lite0@224"], 1.0),
    ("L0@224, square root", ["efficientnet-lite0@224"], 0.5),
    ("L1@240, square root", ["efficientnet-lite1@240"], 0.5),
    ("L2@260, square root", ["efficientnet-lite2@260"], 0.5),
    ("L0@96 + L0@224", ["efficientnet-lite0@96", "efficientnet-lite0@224"], 0.5),
    ("effnet-lite-fast (L0@224 + L1@96)", ["efficientnet-lite0@224", "efficientnet-lite1@96"],
     0.5),
    ("effnet-lite-ensemble (L0@224 + L1@240)",
     ["efficientnet-lite0@224", "efficientnet-lite1@240"], 0.5),
    ("L0@224 + L1@240 + L2@260",
     ["efficientnet-lite0@224", "efficientnet-lite1@240", "efficientnet-lite2@260"], 0.5),
    ("student + L0@96 + L0@224",
     ["student", "efficientnet-lite0@96", "efficientnet-lite0@224"], 0.5),
    ("student + L0@224 + L1@96",
     ["student", "efficientnet-lite0@224", "efficientnet-lite1@96"], 0.5),
    ("student + L0@224 + L1@240",
     ["student", "efficientnet-lite0@224", "efficientnet-lite1@240"], 0.5),
]  # fmt: skip
REFERENCE = "effnet-lite-student without its student (fit today, no --base)"


@dataclass
class CheckSet:
    name: str
    images: list  # PIL images, the pool every episode indexes
    episodes: list[dict[str, list[int]]] = field(default_factory=list)  # s, sl, q, ql
    student: str | None = None  # checkpoint bound to the `student` member
    describe: str = ""


def ensure_emoji(emoji_dir: Path | None) -> Path:
    """The unpacked package folder (emoji.json, img/google/64/); fetched with npm when absent."""
    root = emoji_dir or cache_dir() / "emoji-datasource-google-16.0.0" / "package"
    if (root / "emoji.json").is_file():
        return root
    if emoji_dir is not None:
        raise SystemExit(f"{root}: no emoji.json (pass the unpacked package folder)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", EMOJI_PACKAGE], cwd=tmp, check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            keep = [
                m
                for m in tar.getmembers()
                if m.name == "package/emoji.json" or m.name.startswith("package/img/google/64/")
            ]
            tar.extractall(root.parent, members=keep, filter="data")
    return root


def ensure_emoji_font(font: Path | None) -> Path | None:
    """Noto Color Emoji (CBDT, 136 x 128 px bitmaps): the system's, else unpacked from Debian's
    package into $TINYSHOT_CACHE (never installed: the glyph benchmark scans the system's Noto
    folder, and an emoji font there would change it). None when it cannot be had."""
    if font is not None:
        return font
    system = Path("/usr/share/fonts/truetype/noto") / EMOJI_FONT
    if system.is_file():
        return system
    root = cache_dir() / EMOJI_FONT_PACKAGE
    found = list(root.glob(f"**/{EMOJI_FONT}"))
    if found:
        return found[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", EMOJI_FONT_PACKAGE], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            (deb,) = Path(tmp).glob("*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"no {EMOJI_FONT} ({e}): the 136 px emoji set is skipped", flush=True)
        return None
    found = list(root.glob(f"**/{EMOJI_FONT}"))
    return found[0] if found else None


def render_emoji(font: ImageFont.FreeTypeFont, unified: str) -> Image.Image:
    """One emoji from the colour font (its 136 x 128 bitmap strike), centred on a white
    136 x 136 square."""
    text = "".join(chr(int(h, 16)) for h in unified.split("-"))
    canvas = Image.new("RGBA", (136, 136), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 4), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 136:
        raise ValueError(f"emoji {unified} does not render as one glyph")
    return to_rgb(canvas)


def emoji_sets(
    root: Path, font_path: Path | None, episodes: int, shots: int, queries: int, seed: int
) -> list[CheckSet]:
    """The 64 px PNG set and, with the font, the same emoji and episodes at 136 px."""
    table = json.loads((root / "emoji.json").read_text())
    by_class: dict[str, list[dict]] = {c: [] for c in EMOJI_CLASSES}
    for e in sorted(table, key=lambda e: e["sort_order"]):
        path = root / "img" / "google" / "64" / e["image"]
        if (
            e["subcategory"] in by_class
            and e.get("has_img_google")
            and float(e["added_in"]) <= EMOJI_MAX_VERSION
            and path.is_file()
        ):
            by_class[e["subcategory"]].append(e)
    short = {c: len(v) for c, v in by_class.items() if len(v) < shots + queries}
    if short:
        raise SystemExit(f"emoji classes with fewer than {shots + queries} images: {short}")
    pool = [e for c in EMOJI_CLASSES for e in by_class[c]]
    index = {e["unified"]: i for i, e in enumerate(pool)}
    eps = []
    for k in range(episodes):
        rng = np.random.default_rng(derive_seed(seed, "emoji", k) % 2**63)
        ep: dict[str, list[int]] = {"s": [], "sl": [], "q": [], "ql": []}
        for label, c in enumerate(rng.choice(EMOJI_CLASSES, size=5, replace=False)):
            pick = rng.permutation(len(by_class[c]))[: shots + queries]
            ids = [index[by_class[c][int(i)]["unified"]] for i in pick]
            ep["s"] += ids[:shots]
            ep["sl"] += [label] * shots
            ep["q"] += ids[shots:]
            ep["ql"] += [label] * queries
        eps.append(ep)
    what = (
        f"{len(EMOJI_CLASSES)} emoji subcategories as classes, {len(pool)} emoji (Emoji "
        f"<= {EMOJI_MAX_VERSION}); {episodes} episodes of 5 classes, {shots} supports + "
        f"{queries} held-out per class (seed {seed})"
    )
    sets = [
        CheckSet(
            "emoji-64",
            [open_rgb(root / "img" / "google" / "64" / e["image"]) for e in pool],
            eps,
            describe=f"{EMOJI_PACKAGE} 64 px PNGs on white; {what}",
        )
    ]
    if font_path is not None:
        font = ImageFont.truetype(str(font_path), 109)  # the CBDT strike: 136 x 128 px
        sets.append(
            CheckSet(
                "emoji-136",
                [render_emoji(font, e["unified"]) for e in pool],
                eps,
                describe=f"the same emoji drawn by {font_path.name} ({EMOJI_FONT_PACKAGE}) at "
                f"136 px on white; {what}",
            )
        )
    return sets


def dataset_set(
    name: str, split: str, episodes: int, shots: int, queries: int, seed: int
) -> CheckSet:
    """Episodes of a registry dataset (supports and held-out images from one split)."""
    ds = load_dataset(name, split)
    if name == "glyphs":  # Omniglot-style: the 5 characters of an episode share one script
        scripts = ds.class_scripts  # type: ignore[attr-defined]
        by_script: dict[str, list[str]] = {}
        for c, sc in zip(ds.class_names, scripts, strict=True):
            by_script.setdefault(sc, []).append(c)
        usable = sorted(sc for sc, cl in by_script.items() if len(cl) >= 5)
        eps = []
        for e in range(episodes):
            sc = usable[derive_seed(seed, "script", e) % len(usable)]
            eps.append(sample_episode(ds, 5, shots, queries, derive_seed(seed, e), by_script[sc]))
    else:
        eps = sample_episodes(ds, episodes, 5, shots, queries, seed)
    used: dict[int, int] = {}
    cs = CheckSet(name, [])
    for ep in eps:
        rec: dict[str, list[int]] = {"s": [], "sl": [], "q": [], "ql": []}
        for part, lab, getter in (("s", "sl", ep.support_indices), ("q", "ql", ep.query_indices)):
            idx, labels = getter(ds)
            for i in idx.tolist():
                used.setdefault(int(i), len(used))
            rec[part] = [used[int(i)] for i in idx.tolist()]
            rec[lab] = [int(x) for x in labels.tolist()]
        cs.episodes.append(rec)
    cs.images = ds.load_images(list(used))
    spec, _ = bind_teacher_spec("student+conv4", {"dataset": {"name": name, "split": split}})
    cs.student = spec.split("+")[0].removeprefix("student:")
    cs.describe = (
        f"{name} {split}: {episodes} episodes of 5 classes, {shots} supports + {queries} "
        f"held-out per class (seed {seed}), {len(used)} distinct images"
    )
    return cs


def member_spec(member: str, student: str | None) -> str:
    return f"student:{student}" if member == "student" else member


def member_size(member: str) -> int:
    """A member's input size (the `student` member: its own 32 px)."""
    return int(member.rpartition("@")[2]) if "@" in member else 32


def teacher_size(members: list[str]) -> int:
    """The candidate's `teacher_input_size` as a default would set it: 96 (today's) when no
    member is larger, else its largest member's size, so larger images reach that member."""
    return max(96, *(member_size(m) for m in members))


class Features:
    """Each member's raw features of every pool image, per teacher view, extracted once
    (through the feature cache) when first asked for."""

    def __init__(self, cs: CheckSet, threads: int) -> None:
        self.cs, self.threads = cs, threads
        self.views: dict[int, torch.Tensor] = {}  # teacher size -> uint8 view
        self.view_key: dict[int, int] = {}  # teacher size -> the first size with that view
        self.feats: dict[tuple[str, int], torch.Tensor] = {}

    def key(self, size: int) -> int:
        if size not in self.view_key:
            view = teacher_view(self.cs.images, size)
            same = [k for k, v in self.views.items() if torch.equal(v, view)]
            self.view_key[size] = same[0] if same else size
            self.views.setdefault(self.view_key[size], view)
        return self.view_key[size]

    def side(self, size: int) -> int:
        return int(self.views[self.key(size)].shape[-1])

    def get(self, member: str, size: int) -> torch.Tensor:
        k = (member, self.key(size))
        if k not in self.feats:
            torch.set_num_threads(self.threads)
            x = self.views[k[1]].float() / 255.0
            bb = build_ensemble(member_spec(member, self.cs.student)).eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                self.feats[k] = torch.cat(
                    [bb.member_features(0, x[i : i + 64]) for i in range(0, len(x), 64)]
                )
            c = bb._cache(0)
            print(
                f"  {self.cs.name} {member} on {x.shape[-1]} px: {len(x)} images "
                f"{time.perf_counter() - t0:.1f} s (cache hits {c.hits}, misses {c.misses})",
                flush=True,
            )
        return self.feats[k]


def concat(feats: Features, members: list[str], power: float) -> torch.Tensor:
    """The candidate's features (EnsembleBackbone's rule), each member on the candidate's view."""
    parts = []
    size = teacher_size(members)
    for m in members:
        f = feats.get(m, size)
        if power != 1.0:
            f = f.sign() * f.abs().pow(power)
        parts.append(F.normalize(f, dim=-1))
    return torch.cat(parts, dim=1)


def score(cs: CheckSet, x: torch.Tensor) -> dict[str, object]:
    loo_c = loo_t = 0
    held, loo_ep = [], []
    for ep in cs.episodes:
        s, q = x[ep["s"]], x[ep["q"]]
        sl, ql = torch.tensor(ep["sl"]), torch.tensor(ep["ql"])
        c, t = loo_protonet_accuracy(s, sl, 5)
        loo_c, loo_t = loo_c + c, loo_t + t
        loo_ep.append(c / t)
        protos = ProtoNetTeacher.compute_prototypes(F.normalize(s, dim=-1), sl)
        pred = (F.normalize(q, dim=-1) @ protos.t()).argmax(1)
        held.append(float((pred == ql).double().mean()))
    return {
        "loo": loo_c / loo_t,
        "heldout": sum(held) / len(held),
        "loo_episodes": loo_ep,
        "heldout_episodes": held,
    }


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over episodes and its standard error."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1)) if len(d) > 1 else 0.0
    return m, sd / math.sqrt(len(d))


def time_members(images: list, members: list[str], student: str | None, threads: int, n: int):
    """Per member: ms per image of its forward pass (cache off, a batch of n run in the
    ensemble's chunks of 16, after a warm-up), the least of 3 in process CPU time (what the
    member itself costs, less sensitive to other jobs on the machine) and in wall time."""
    torch.set_num_threads(threads)
    x = teacher_view(images[:n], 96).float() / 255.0
    out = {}
    for m in members:
        if m == "student" and student is None:
            continue
        bb = build_ensemble(member_spec(m, student), feature_cache=False).eval()
        cpu = wall = float("inf")
        with torch.no_grad():
            bb(x)  # warm-up
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                bb(x)
                cpu = min(cpu, time.process_time() - c0)
                wall = min(wall, time.perf_counter() - t0)
        out[m] = {"cpu_ms": 1000 * cpu / len(x), "wall_ms": 1000 * wall / len(x)}
        print(
            f"  cost {m}: {out[m]['cpu_ms']:.1f} ms/image CPU, {out[m]['wall_ms']:.1f} wall "
            f"(batch {len(x)})",
            flush=True,
        )
    return out


def candidates(members: list[str]) -> list[dict[str, object]]:
    """The named candidates, then every other subset of the members at power 1 and 0.5."""
    rows: list[dict[str, object]] = [
        {"label": label, "members": ms, "power": power}
        for label, ms, power in NAMED
        if all(m in members for m in ms)
    ]
    named = {(tuple(r["members"]), r["power"]) for r in rows}  # type: ignore[arg-type]
    for r in range(1, len(members) + 1):
        for combo in itertools.combinations(members, r):
            for power in (1.0, 0.5):
                if (combo, power) not in named:
                    rows.append({"label": None, "members": list(combo), "power": power})
    return rows


def rounded(x: Any) -> Any:
    """Floats to 5 decimals, for a readable JSON file."""
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--emoji-dir", type=Path, default=None, help="unpacked npm package folder")
    ap.add_argument("--emoji-font", type=Path, default=None, help=f"a {EMOJI_FONT}")
    ap.add_argument("--emoji-episodes", type=int, default=200)
    ap.add_argument("--glyph-episodes", type=int, default=10)
    ap.add_argument("--fm-episodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the features")
    ap.add_argument("--cost-threads", type=int, default=1, help="torch threads for the timing")
    ap.add_argument("--cost-batch", type=int, default=32)
    ap.add_argument("--members", nargs="+", default=["student", *IMAGENET], help="(quick checks)")
    ap.add_argument("--out", type=Path, default=Path("results/teacher-default.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    sets = [
        *emoji_sets(ensure_emoji(args.emoji_dir), ensure_emoji_font(args.emoji_font),
                    args.emoji_episodes, 5, 7, args.seed),
        dataset_set("glyphs", "evaluation", args.glyph_episodes, 5, 10, args.seed),
        dataset_set("fashion-mnist", "novel-train", args.fm_episodes, 5, 20, 1000),
    ]  # fmt: skip
    load_before = os.getloadavg()
    cost = time_members(sets[0].images, args.members, sets[-1].student, args.cost_threads,
                        args.cost_batch)  # fmt: skip
    load_after = os.getloadavg()
    report: dict[str, Any] = {
        "command": "PYTHONPATH=src python experiments/teacher_default.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_around_timing": [load_before, load_after],
        },
        "cost_ms_per_image": {
            "members": cost,
            "how": f"forward pass, feature cache off, a batch of {args.cost_batch} 64 px emoji "
            f"(chunks of 16), least of 3 after a warm-up, {args.cost_threads} torch thread(s); "
            "a candidate's cost is the sum of its members' CPU ms",
        },
        "reference": REFERENCE,
        "sets": {},
        "summary": {},
    }
    for cs in sets:
        print(f"{cs.name}: {cs.describe}", flush=True)
        feats = Features(cs, args.threads)
        avail = [m for m in args.members if m != "student" or cs.student is not None]
        rows = candidates(avail)
        for row in rows:
            ms = row["members"]
            row.update(score(cs, concat(feats, ms, row["power"])))
            row["teacher_input_size"] = teacher_size(ms)
            row["images_px"] = feats.side(teacher_size(ms))  # what the teacher view holds
            row["ms_per_image"] = sum(cost[m]["cpu_ms"] for m in ms)
            row["spec"] = "+".join(ms) + (f";power={row['power']:g}" if row["power"] != 1 else "")
        ref = next((r for r in rows if r["label"] == REFERENCE), rows[0])
        for row in rows:
            row["heldout_minus_reference"] = paired(
                row["heldout_episodes"], ref["heldout_episodes"]
            )
            row["loo_minus_reference"] = paired(row["loo_episodes"], ref["loo_episodes"])
        rows.sort(key=lambda r: -r["heldout"])
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
            if not row["label"]:  # per-episode figures for the named candidates only
                del row["loo_episodes"], row["heldout_episodes"]
        report["sets"][cs.name] = {
            "describe": cs.describe,
            "student_member": cs.student,
            "episodes": len(cs.episodes),
            "supports": sum(len(e["s"]) for e in cs.episodes),
            "heldout_images": sum(len(e["q"]) for e in cs.episodes),
            "candidates": rows,
        }
        for row in rows:
            if not row["label"]:
                continue
            d, se = row["heldout_minus_reference"]
            report["summary"].setdefault(
                row["label"], {"spec": row["spec"], "ms_per_image": row["ms_per_image"]}
            )
            report["summary"][row["label"]][cs.name] = {
                "loo": row["loo"], "heldout": row["heldout"], "heldout_minus_reference": [d, se],
                "rank": row["rank"], "of": len(rows),
            }  # fmt: skip
            print(
                f"  {100 * row['loo']:5.1f} LOO  {100 * row['heldout']:5.1f} held-out "
                f"({100 * d:+5.1f} +- {100 * se:3.1f})  {row['ms_per_image']:6.1f} ms  "
                f"rank {row['rank']:3d}  {row['label']}",
                flush=True,
            )
    report["seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rounded(report), indent=1) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
