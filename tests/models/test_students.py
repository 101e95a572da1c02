"""Student architectures: exact parameter counts, shapes, head reset, checkpoints; the
EfficientNet-Lite0 student's ImageNet weights and input normalisation."""

from __future__ import annotations

import pytest
import torch

from tinyshot.errors import ConfigError, ModelError
from tinyshot.models.students import (
    CONV4_PARAMS,
    EFFNET_LITE0_PARAMS,
    RESNET12_PARAMS,
    build_student,
    count_parameters,
    load_student,
    save_student,
)


def test_conv4_parameter_count_is_the_papers_113k():
    s = build_student("conv4", num_classes=5, input_size=84)
    # conv weights + biases, BN gamma/beta (running stats are buffers, not counted)
    expected = (3 * 64 * 9 + 64) + 3 * (64 * 64 * 9 + 64) + 4 * 2 * 64
    assert expected == CONV4_PARAMS == 113_088
    assert count_parameters(s, include_head=False) == 113_088
    assert count_parameters(s) == 113_088 + 1600 * 5 + 5
    # one input channel (Omniglot-style) only changes the first conv
    g = build_student("conv4", 5, 84, in_channels=1)
    assert count_parameters(g, include_head=False) == 113_088 - 2 * 64 * 9


def test_resnet12_parameter_count():
    s = build_student("resnet12", num_classes=5, input_size=32)
    expected, cin = 0, 3
    for c in (64, 128, 256, 512):
        expected += cin * c * 9 + 2 * c * c * 9 + 3 * 2 * c + cin * c + 2 * c
        cin = c
    assert expected == RESNET12_PARAMS == 7_996_800
    assert count_parameters(s, include_head=False) == 7_996_800
    assert count_parameters(s) == 7_996_800 + 512 * 5 + 5


def test_efficientnet_lite0_parameter_count():
    """Stem conv3x3 3->32 + BN; per MBConv block (repeats, kernel, expansion, in, out): 1x1
    expansion in->in*e + BN (when e > 1), depthwise kxk + BN, 1x1 projection -> out + BN, no
    biases, no squeeze-excite (the Lite variants drop it); head conv 320->1280 + BN."""
    blocks = [(1, 3, 1, 32, 16), (2, 3, 6, 16, 24), (2, 5, 6, 24, 40), (3, 3, 6, 40, 80)]
    blocks += [(3, 5, 6, 80, 112), (4, 5, 6, 112, 192), (1, 3, 6, 192, 320)]
    expected = 3 * 32 * 9 + 2 * 32
    for repeats, k, e, cin, cout in blocks:
        for r in range(repeats):
            i = cin if r == 0 else cout
            mid = i * e
            expected += (i * mid + 2 * mid if e > 1 else 0) + mid * k * k + 2 * mid
            expected += mid * cout + 2 * cout
    expected += 320 * 1280 + 2 * 1280
    assert expected == EFFNET_LITE0_PARAMS == 3_371_008
    s = build_student("efficientnet-lite0", num_classes=5, input_size=96)
    assert count_parameters(s, include_head=False) == 3_371_008
    assert count_parameters(s) == 3_371_008 + 1280 * 5 + 5


@pytest.mark.parametrize(
    ("arch", "size", "dim"),
    [
        ("conv4", 32, 256),
        ("conv4", 84, 1600),
        ("resnet12", 32, 512),
        ("resnet12", 84, 512),
        ("efficientnet-lite0", 96, 1280),
        ("efficientnet-lite0", 64, 1280),
    ],
)
def test_forward_shapes(arch, size, dim):
    s = build_student(arch, num_classes=7, input_size=size).eval()
    x = torch.rand(2, 3, size, size)
    assert s.feature_dim == dim
    assert s.features(x).shape == (2, dim)
    assert s.backbone(x).shape == (2, dim)
    assert s(x).shape == (2, 7)


def test_normalisation_is_inside_the_model():
    s = build_student("conv4", 5, 32).eval()
    norm = s.backbone.normalize
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), (x - mean) / std)
    assert "backbone.normalize.mean" in s.state_dict()


def test_reset_head_keeps_backbone():
    s = build_student("conv4", 64, 32)
    before = {k: v.clone() for k, v in s.backbone.state_dict().items()}
    s.reset_head(5)
    assert s.num_classes == 5 and s.head.out_features == 5
    assert all(torch.equal(before[k], v) for k, v in s.backbone.state_dict().items())


def test_bad_options():
    with pytest.raises(ConfigError, match="unknown student architecture"):
        build_student("vgg", 5, 32)
    with pytest.raises(ConfigError, match="input_size"):
        build_student("conv4", 5, 8)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    s = build_student("conv4", 3, 32).eval()
    path = save_student(s, tmp_path / "s.pt", class_names=["a", "b", "c"])
    loaded, meta = load_student(path)
    assert meta["class_names"] == ["a", "b", "c"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), s(x))
    with pytest.raises(ModelError, match="arch='conv4', expected arch='resnet12'"):
        load_student(path, arch="resnet12")
    with pytest.raises(ModelError, match="num_classes"):
        load_student(path, num_classes=5)
    with pytest.raises(ConfigError, match="2 class names"):
        save_student(s, tmp_path / "t.pt", class_names=["a", "b"])


def test_registry_loads_any_checkpoint_by_kind(tmp_path):
    from tinyshot.models.registry import load_model
    from tinyshot.models.teacher import ProtoNetTeacher, build_teacher
    from tinyshot.utils.checkpoint import save_checkpoint

    s_path = save_student(build_student("resnet12", 2, 32), tmp_path / "s.pt")
    model, meta = load_model(s_path)
    assert meta["arch"] == "resnet12" and model.num_classes == 2
    t = build_teacher("conv4", input_size=16)
    t_path = save_checkpoint(tmp_path / "t.pt", model=t, step=0, meta=t.meta())
    model, meta = load_model(t_path)
    assert isinstance(model, ProtoNetTeacher) and meta["arch"] == "protonet:conv4"
    other = save_checkpoint(
        tmp_path / "o.pt", model=torch.nn.Linear(1, 1), step=0, meta={"arch": "mlp"}
    )
    with pytest.raises(ModelError, match="not a tinyshot student or teacher"):
        load_model(other)


def test_efficientnet_lite0_student_normalises_as_its_imagenet_weights_want():
    """The student scales [0,1] RGB to [-1, 1] itself (the shipped weights' preprocessing, not
    ImageNet's mean/std), so at 96 px its features are the Lite0 teacher backbone's, whose
    ImageNet classifier is checked on a real photo in test_teacher.py."""
    from tinyshot.models.backbones import build_backbone

    s = build_student("efficientnet-lite0", 5, 96).eval()
    assert s.backbone.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert s.backbone.normalize.std.flatten().tolist() == [0.5, 0.5, 0.5]
    x = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    teacher = build_backbone("efficientnet-lite0", input_size=96).eval()
    with torch.no_grad():
        assert torch.allclose(s.features(x), teacher(x), atol=1e-4)


def test_efficientnet_lite0_student_keeps_the_imagenet_weights():
    """Its backbone with the shipped ImageNet classifier calls scikit-image's cat an Egyptian
    cat (class 285), as ASSETS.md's sanity check says (optional: needs scikit-image)."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    from tinyshot.data.transforms import pil_to_tensor
    from tinyshot.models.efficientnet_lite import load_efficientnet_lite

    im = Image.fromarray(data.chelsea())
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    x = pil_to_tensor(im.crop((left, top, left + side, top + side)), 224)[None]
    student = build_student("efficientnet-lite0", 5, 224).eval()
    with torch.no_grad():
        logits = load_efficientnet_lite(0, 224)._fc(student.features(x))
    assert int(logits.argmax()) == 285


def test_efficientnet_lite0_student_options_and_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="3 input channels"):
        build_student("efficientnet-lite0", 5, 96, in_channels=1)
    torch.manual_seed(0)
    s = build_student("efficientnet-lite0", 3, 64)
    # no stochastic depth: two training-mode passes give the same features
    x = torch.rand(2, 3, 64, 64)
    s.train()
    assert torch.equal(s.features(x), s.features(x))
    s.eval()
    ck = save_student(s, tmp_path / "lite0.pt", class_names=["a", "b", "c"])
    back, meta = load_student(ck)
    assert (back.arch, back.input_size, meta["class_names"]) == (
        "efficientnet-lite0",
        64,
        ["a", "b", "c"],
    )
    with torch.no_grad():
        assert torch.equal(back(x), s(x))
