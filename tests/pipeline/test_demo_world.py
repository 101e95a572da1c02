"""The demo's two worlds: which generator and which support split each one uses."""

from __future__ import annotations

import pytest

from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.demo import DemoConfig, demo_datasets


def test_world_picks_generator_and_support_split():
    known = DemoConfig()
    assert known.world == "known"
    assert known.resolve_world().support_split == "novel-pool"
    assert known.pipeline.generator == "fashion-mnist-known"
    unknown = DemoConfig(world="unknown", pipeline=PipelineConfig(generator="fashion-mnist-known"))
    unknown.resolve_world()
    assert unknown.pipeline.generator == "fashion-mnist"
    custom = DemoConfig(pipeline=PipelineConfig(generator="/models/my-sd15"))
    custom.resolve_world()
    assert custom.pipeline.generator == "/models/my-sd15"  # a user's own generator is kept
    with pytest.raises(ConfigError, match="demo world must be one of"):
        DemoConfig(world="mars").resolve_world()


def test_known_world_supports_come_from_the_pool_only():
    from tinyshot.data.fashion_mnist import heldout_pool, load_fashion_mnist

    support, query, base = demo_datasets("known")
    pool = set(heldout_pool(load_fashion_mnist("train").labels).tolist())
    assert {int(support.item_id(i)) for i in range(len(support))} == pool
    assert query.split == "novel-test" and base.split == "base"
    assert support.class_names == query.class_names


def test_per_class_frechet_equals_the_direct_computation(tmp_path):
    """Real features computed once per class give each (generator, class) the same distance as
    a direct frechet_between on frame-cropped fakes and the class's first n test images."""
    import numpy as np

    from tinyshot.data.transforms import crop_generator_frame, images_to_tensor, tensor_to_pil
    from tinyshot.diffusion.store import ImageStore
    from tinyshot.evaluation.frechet import EFFNET_METRIC, BackboneFeatures, frechet_between
    from tinyshot.models.backbones import build_backbone
    from tinyshot.pipeline.config import generator_prep
    from tinyshot.pipeline.demo import frechet_per_class

    _, query, _ = demo_datasets("known")
    names = query.class_names[:2]
    rng = np.random.default_rng(0)
    episode = tmp_path / "episode"
    for k, g in enumerate(("ti", "tint")):
        store = ImageStore.create_or_resume(episode / "synthetic" / g, {"method": g})
        recs = [
            {"class_index": c, "index": j, "seed": j, "path": f"images/{c:03d}/{j:06d}.png"}
            for c in range(2)
            for j in range(12)
        ]
        imgs = rng.integers(0, 256 - 100 * k, (24, 32, 32, 3), dtype=np.uint8)
        store.write(recs, imgs)
    n = 12
    fd = frechet_per_class(tmp_path, episode, query, names, ["ti", "tint"], n)
    assert (tmp_path / "frechet.json").is_file()
    prep = generator_prep(PipelineConfig())
    extractor = BackboneFeatures(build_backbone("efficientnet-lite0", input_size=96), EFFNET_METRIC)
    for g in ("ti", "tint"):
        store = ImageStore(episode / "synthetic" / g)
        for c, name in enumerate(names):
            fake = crop_generator_frame(images_to_tensor(store.load_images(c)), prep)
            real = query.load_images(query.indices_of(query.class_id(name))[:n])
            direct = frechet_between([tensor_to_pil(x) for x in fake], real, extractor).value
            assert fd["per_generator"][g][name] == pytest.approx(direct, rel=1e-4)
    assert fd["mean"]["tint"] != fd["mean"]["ti"]


def test_judged_synthetic_labels_real_images_as_their_class(tmp_path):
    """Real test images in the generator's frame (padded 28 -> 32 px) are judged as their class
    about as often as the judge's test accuracy (90.8%); the judge reads them as trained."""
    import numpy as np

    from tinyshot.diffusion.store import ImageStore
    from tinyshot.pipeline.demo import judged_synthetic

    _, query, _ = demo_datasets("known")
    names = ["Sandal", "Bag"]
    store = ImageStore.create_or_resume(tmp_path / "ep" / "synthetic" / "name", {"method": "x"})
    recs, imgs = [], []
    for c, name in enumerate(names):
        for j, im in enumerate(query.load_images(query.indices_of(query.class_id(name))[:40])):
            a = np.asarray(im.convert("RGB"))
            imgs.append(np.pad(a, ((2, 2), (2, 2), (0, 0))))
            recs.append({"class_index": c, "index": j, "seed": j, "path": f"i/{c}/{j}.png"})
    store.write(recs, np.stack(imgs))
    res = judged_synthetic(tmp_path, tmp_path / "ep", names, ["name"])
    share = res["per_generator"]["name"]
    assert share["images"] == {"Sandal": 40, "Bag": 40} and share["chance"] == 0.1
    assert min(share["per_class"].values()) >= 0.85
    assert (tmp_path / "judged.json").is_file()


def test_demo_adds_each_worlds_lora_method_at_its_budget():
    """The known world adds DataDream's `lora` at the demo's short budget on the class names
    (the generator draws them already) in place of plain `name`; the unknown world adds
    `lora-dafusion` at the pipeline's budget; a preset, file or flag wins."""
    from tinyshot.pipeline.config import DEFAULT_METHODS
    from tinyshot.pipeline.demo import demo_methods
    from tinyshot.presets import preset

    known = DemoConfig()
    no_name = tuple(m for m in DEFAULT_METHODS if m != "name")
    assert known.pipeline.methods == (*no_name, "lora") == demo_methods("known")
    assert known.pipeline.lora["steps"] == 100 and known.pipeline.lora["prompt"] == "name"
    assert DemoConfig.from_dict({}).pipeline.to_dict() == known.pipeline.to_dict()
    unknown = DemoConfig.from_dict({"world": "unknown"}).pipeline
    assert unknown.methods == (*DEFAULT_METHODS, "lora-dafusion")
    assert DemoConfig(world="unknown").pipeline.to_dict() == unknown.to_dict()  # the API too
    assert unknown.lora == PipelineConfig().lora  # 1000 steps on a learned token
    flag = DemoConfig.from_dict({"pipeline": {"lora": {"steps": 50}}}).pipeline
    assert flag.lora["steps"] == 50 and flag.lora["prompt"] == "name"
    paper = DemoConfig.from_dict({"pipeline": preset("paper")}).pipeline
    assert paper.lora["steps"] == 2000 and paper.lora["lr"] == 1e-4
    only = DemoConfig.from_dict({"pipeline": {"methods": ["teacher"]}}).pipeline
    assert only.methods == ("teacher",)
