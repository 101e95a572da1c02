"""DINOv2 teacher backbones (dinov2-small, dinov2-base): the published architectures with random
weights (no hub weights offline), a local Dinov2Model folder through the backbone factory, and
the hub aliases routed to transformers' Dinov2Model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyshot.errors import ModelError
from tinyshot.models.backbones import (
    DINOV2_CONFIGS,
    Dinov2Backbone,
    ViTBackbone,
    build_backbone,
    build_tiny_dinov2,
    build_tiny_vit,
    random_weight_backbone,
)
from tinyshot.models.teacher import build_teacher

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("name", "params", "dim"),
    [
        # what transformers' Dinov2Model gives for the published facebook/dinov2-* configs
        # (mask token and the 1 + 37 x 37 position embeddings of the 518 px grid included)
        ("dinov2-small", 22_056_576, 384),
        ("dinov2-base", 86_580_480, 768),
    ],
)
def test_full_size_random_dinov2(name, params, dim):
    bb = random_weight_backbone(name)
    assert isinstance(bb, Dinov2Backbone)
    assert sum(p.numel() for p in bb.parameters()) == params
    cfg = bb.dinov2.config
    assert (cfg.patch_size, cfg.image_size, cfg.num_hidden_layers) == (14, 518, 12)
    assert (bb.input_size, bb.feature_dim, bb.patch_size) == (224, dim, 14)
    assert bb.arch_id == f"dinov2-h{dim}-l12-p14"
    assert torch.equal(bb.mean, IMAGENET_MEAN) and torch.equal(bb.std, IMAGENET_STD)
    x = torch.rand(2, 3, 100, 100)  # resized to 224
    with torch.no_grad():
        f = bb(x)
        out = bb.dinov2(pixel_values=bb.prepare(x))
    assert f.shape == (2, dim) and bool(torch.isfinite(f).all())
    assert out.last_hidden_state.shape == (2, 1 + 16 * 16, dim)  # 224 / 14 = 16 patches a side
    assert torch.equal(f, out.pooler_output)  # CLS after the final layernorm


def test_published_configs():
    small, base = DINOV2_CONFIGS["dinov2-small"], DINOV2_CONFIGS["dinov2-base"]
    assert (small["hidden_size"], small["num_attention_heads"]) == (384, 6)
    assert (base["hidden_size"], base["num_attention_heads"]) == (768, 12)
    for c in (small, base):
        assert (c["num_hidden_layers"], c["mlp_ratio"], c["patch_size"]) == (12, 4, 14)
        assert (c["image_size"], c["layerscale_value"], c["use_swiglu_ffn"]) == (518, 1.0, False)


def test_dinov2_folder_round_trip(tmp_path):
    from transformers import Dinov2Model

    folder = build_tiny_dinov2(tmp_path / "dinov2", hidden_size=32, num_layers=2)
    bb = build_backbone(str(folder))
    assert isinstance(bb, Dinov2Backbone) and bb.name == str(folder)
    assert (bb.feature_dim, bb.input_size, bb.arch_id) == (32, 224, "dinov2-h32-l2-p14")
    ref_model = Dinov2Model.from_pretrained(str(folder)).eval()
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        f = bb(x)
        xr = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        ref = ref_model(pixel_values=(xr - IMAGENET_MEAN) / IMAGENET_STD).pooler_output
        assert f.shape == (3, 32)
        assert torch.allclose(f, ref, atol=1e-6)
        # the same weights as the saved model
        saved = ref_model.state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in bb.dinov2.state_dict().items())
        # another input size (a 6 x 6 patch grid)
        assert build_backbone(str(folder), input_size=84)(x).shape == (3, 32)
    # a teacher checkpoint on it round-trips and refuses a ViT of the same width
    from tinyshot.utils.checkpoint import save_checkpoint

    t = build_teacher(str(folder))
    ck = save_checkpoint(tmp_path / "t.pt", model=t, step=0, meta=t.meta())
    t2 = build_teacher(None, checkpoint=ck)
    assert isinstance(t2.backbone, Dinov2Backbone) and t2.input_size == 224
    assert torch.equal(t2.backbone(x), t.backbone(x))
    vit = build_tiny_vit(tmp_path / "vit", image_size=32, patch_size=8, hidden_size=32)
    with pytest.raises(ModelError, match="checkpoint is for 'protonet:dinov2-h32-l2-p14'"):
        build_teacher(str(vit), checkpoint=ck)


@pytest.mark.parametrize("name", ["dinov2-small", "dinov2-base", "DINOv2-Base", "dinov2_small"])
def test_aliases_load_dinov2_from_the_hub_id(name, tmp_path, monkeypatch):
    """The names ask transformers' Dinov2Model for facebook/dinov2-*, without a config look-up
    (here a local tiny model stands in for the download)."""
    from transformers import AutoConfig, Dinov2Model

    folder = build_tiny_dinov2(tmp_path / "dinov2")
    real = Dinov2Model.from_pretrained  # bound to the class
    asked = []

    def fake_from_pretrained(source, *a, **kw):
        asked.append(source)
        return real(str(folder))

    def no_config(*a, **kw):
        raise AssertionError("no config look-up for a known alias")

    monkeypatch.setattr(Dinov2Model, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(AutoConfig, "from_pretrained", no_config)
    bb = build_backbone(name)
    assert isinstance(bb, Dinov2Backbone) and bb.name == name
    assert asked == [f"facebook/{name.lower().replace('_', '-')}"]


def test_vit_backbone_refuses_a_dinov2_folder(tmp_path):
    folder = build_tiny_dinov2(tmp_path / "dinov2")
    with pytest.raises(ModelError, match="model type 'dinov2' is not 'vit'"):
        ViTBackbone(str(folder))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match="'bert' is not a ViT or DINOv2"):
        build_backbone(str(tmp_path / "other"))


def test_reduced_random_teachers_for_cpu_checks():
    for name in ("dino-vitb16", "dinov2-small", "dinov2-base"):
        bb = random_weight_backbone(name, width_divisor=10, input_size=32)
        with torch.no_grad():
            assert bb(torch.rand(1, 3, 32, 32)).shape == (1, bb.feature_dim)
        assert bb.name == f"{name} (random weights)"
