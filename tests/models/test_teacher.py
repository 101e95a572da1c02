"""ProtoNet teacher math and the backbones (tiny ViT folder, EfficientNet-Lite0 weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyshot.errors import DataError, ModelError
from tinyshot.models.backbones import build_backbone, build_tiny_vit
from tinyshot.models.teacher import ProtoNetTeacher, build_teacher, default_batch_size


def test_prototype_and_cosine_math_match_manual_computation():
    torch.manual_seed(0)
    t = build_teacher("conv4", input_size=16, init_scale=7.0).eval()
    with torch.no_grad():
        t.bias.fill_(0.25)
    support = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    query = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        fs, fq = t.backbone(support), t.backbone(query)
    protos = []
    for c in range(3):
        fc = [fs[i] / fs[i].norm() for i in range(6) if labels[i] == c]
        m = sum(fc) / len(fc)
        protos.append(m / m.norm())
    manual = torch.stack(
        [torch.stack([7.0 * torch.dot(q / q.norm(), p) + 0.25 for p in protos]) for q in fq]
    )
    t.set_support(support, labels)
    assert t.num_classes == 3
    with torch.no_grad():
        assert torch.allclose(t(query), manual, atol=1e-5)
        assert torch.allclose(t.logits_episode(support, labels, query), manual, atol=1e-5)
    probs = t.predict_proba(query, temperature=2.0, batch_size=3)
    assert torch.allclose(probs, torch.softmax(manual / 2.0, dim=1), atol=1e-5)
    assert probs.shape == (4, 3)


def test_logits_episode_is_differentiable():
    t = build_teacher("conv4", input_size=16)
    loss = F.cross_entropy(
        t.logits_episode(
            torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]), torch.rand(2, 3, 16, 16)
        ),
        torch.tensor([0, 1]),
    )
    loss.backward()
    assert t.scale.grad is not None and t.backbone.net.net.blocks[0][0].weight.grad is not None


def test_default_batch_is_small_on_cpu_and_does_not_change_the_labels():
    assert default_batch_size(torch.device("cpu")) == 16
    assert default_batch_size(torch.device("cuda")) == 64
    t = build_teacher("conv4", input_size=16).eval()
    g = torch.Generator().manual_seed(0)
    support, queries = torch.rand(6, 3, 16, 16, generator=g), torch.rand(40, 3, 16, 16, generator=g)
    t.set_support(support, torch.tensor([0, 1, 2, 0, 1, 2]))
    auto = t.predict_proba(queries)  # 16 per call: three calls
    one_call = t.predict_proba(queries, batch_size=64)
    assert auto.shape == (40, 3)
    assert torch.allclose(auto, one_call, atol=1e-6)


def test_predict_before_support_and_bad_support():
    t = build_teacher("conv4", input_size=16)
    with pytest.raises(ModelError, match="set_support"):
        t.predict_proba(torch.rand(2, 3, 16, 16))
    with pytest.raises(DataError, match="classes without images: \\[1\\]"):
        ProtoNetTeacher.compute_prototypes(torch.rand(3, 8), torch.tensor([0, 2, 2]))


def test_tiny_vit_from_folder(tmp_path):
    folder = build_tiny_vit(tmp_path / "vit", image_size=32, patch_size=8, hidden_size=32)
    bb = build_backbone(str(folder))
    assert (bb.feature_dim, bb.input_size, bb.arch_id) == (32, 32, "vit-h32-l2-p8")
    x = torch.rand(3, 3, 20, 20)  # resized internally to 32
    with torch.no_grad():
        f = bb(x)
        assert f.shape == (3, 32)
        # same as the raw model's CLS token on the normalised, resized input
        xr = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = bb.vit(pixel_values=(xr - mean) / std).last_hidden_state[:, 0]
        assert torch.allclose(f, ref, atol=1e-6)
        # another input size uses interpolated position embeddings
        assert build_backbone(str(folder), input_size=48)(x).shape == (3, 32)
    # teacher checkpoint on a ViT round-trips, and refuses another backbone
    t = build_teacher(str(folder))
    from tinyshot.utils.checkpoint import save_checkpoint

    ck = save_checkpoint(tmp_path / "t.pt", model=t, step=0, meta=t.meta())
    t2 = build_teacher(None, checkpoint=ck)
    assert torch.equal(t2.scale, t.scale) and t2.backbone.arch_id == "vit-h32-l2-p8"
    with pytest.raises(ModelError, match="checkpoint is for 'protonet:vit-h32-l2-p8'"):
        build_teacher("conv4", checkpoint=ck, input_size=16)


def test_missing_or_wrong_model_folder(tmp_path):
    with pytest.raises(ModelError, match="ViT model folder not found"):
        build_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        build_backbone(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="checkpoint not found"):
        build_teacher("conv4", checkpoint=tmp_path / "none.pt")


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    bb = build_backbone("efficientnet-lite0", input_size=64).eval()
    assert bb.feature_dim == 1280
    # exact size of EfficientNet-Lite0 incl. its 1000-way classifier
    assert sum(p.numel() for p in bb.net.parameters()) == 4_652_008
    # pretrained BN statistics differ from the fresh-init (0, 1): the weights were loaded
    bn = bb.net._bn0
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f1, f2 = bb(x), bb(x)
    assert f1.shape == (2, 1280) and torch.equal(f1, f2)
    try:
        from skimage import data  # optional: the documented sanity check
    except ImportError:
        return
    from PIL import Image

    from tinyshot.data.transforms import pil_to_tensor

    full = build_backbone("efficientnet-lite0").eval()
    im = Image.fromarray(data.chelsea())
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    img = pil_to_tensor(im.crop((left, top, left + side, top + side)), 224)[None]
    with torch.no_grad():
        assert int(full.imagenet_logits(img).argmax()) == 285
