"""The demo's two worlds: which generator and which support split each one uses."""

from __future__ import annotations

import pytest

from tinyshot.errors import ConfigError
from tinyshot.pipeline.demo import DemoConfig, demo_datasets
from tinyshot.pipeline.episode import PipelineConfig


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
