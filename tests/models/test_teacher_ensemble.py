"""The ensemble teacher: spec parsing, exact size, the ProtoNet on concatenated features, and
the on-disk feature cache. Only Lite0's weights are needed (Lite1/2 are built without
weights here, so these tests do not depend on their packages being installed)."""

from __future__ import annotations

import pytest
import torch

from tinyshot.errors import ConfigError
from tinyshot.models.backbones import FeatureBackbone, build_backbone
from tinyshot.models.ensemble import ENSEMBLES, EnsembleBackbone, parse_ensemble_spec
from tinyshot.models.feature_cache import FeatureCache, image_keys
from tinyshot.models.teacher import ProtoNetTeacher, build_teacher


class ChannelMeans(FeatureBackbone):
    """Toy member: features = per-channel means of the given channels."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__(16, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.channels = list(channels)
        self.feature_dim = len(channels)
        self.name = self.arch_id = f"means{channels}"

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, self.channels]


def flat(values: list[tuple[float, float, float]]) -> torch.Tensor:
    return torch.tensor(values).view(-1, 3, 1, 1).expand(-1, 3, 8, 8).contiguous()


def test_protonet_on_concatenated_normalised_features_matches_hand_computation():
    ens = EnsembleBackbone(
        [ChannelMeans((0, 1)), ChannelMeans((1, 2))], power=0.5, cache_root=False
    )
    teacher = ProtoNetTeacher(ens, init_scale=10.0).eval()
    # sqrt then L2 per member: s0 -> A (0.8, 0.6), B (1, 0); s1 -> A (0, 1), B (0.8, 0.6)
    teacher.set_support(flat([(0.64, 0.36, 0.0), (0.0, 0.64, 0.36)]), torch.tensor([0, 1]))
    # q -> A (0.6, 0.8), B (1, 0); cos to p0 = (0.96 + 1) / 2, to p1 = (0.8 + 0.8) / 2
    with torch.no_grad():
        logits = teacher(flat([(0.36, 0.64, 0.0)]))
    torch.testing.assert_close(logits, torch.tensor([[9.8, 8.0]]))
    assert ens.feature_dim == 4
    # without the power transform: A of q = (0.36, 0.64)/0.734..., B = (1, 0)
    ens.power = 1.0
    teacher.set_support(flat([(0.64, 0.36, 0.0), (0.0, 0.64, 0.36)]), torch.tensor([0, 1]))
    a_q = torch.tensor([0.36, 0.64]) / torch.tensor([0.36, 0.64]).norm()
    a_s0 = torch.tensor([0.64, 0.36]) / torch.tensor([0.64, 0.36]).norm()
    b_s1 = torch.tensor([0.64, 0.36]) / torch.tensor([0.64, 0.36]).norm()
    want = 10 * torch.tensor([(a_q @ a_s0 + 1.0) / 2, (a_q[1] + b_s1[0]) / 2])
    with torch.no_grad():
        torch.testing.assert_close(teacher(flat([(0.36, 0.64, 0.0)]))[0], want)


def test_ensemble_spec_parsing_and_errors():
    members, opts = parse_ensemble_spec("efficientnet-lite0@96+efficientnet-lite1;power=0.5")
    assert members == [("efficientnet-lite0", 96), ("efficientnet-lite1", None)]
    assert opts == {"power": 0.5}
    assert parse_ensemble_spec("effnet-lite-ensemble") == parse_ensemble_spec(
        ENSEMBLES["effnet-lite-ensemble"]
    )
    with pytest.raises(ConfigError, match="integer size"):
        parse_ensemble_spec("efficientnet-lite0@big+conv4")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_ensemble_spec("conv4+conv4;center=1")
    with pytest.raises(ConfigError, match=r"power must be in \(0, 1\]"):
        parse_ensemble_spec("conv4+conv4;power=2")
    with pytest.raises(ConfigError, match="only Lite"):
        build_backbone("efficientnet-lite4")


def test_named_ensemble_exact_size():
    bb = build_backbone("effnet-lite-ensemble", pretrained=False, feature_cache=False)
    assert isinstance(bb, EnsembleBackbone)
    sizes = [(m.arch_id, m.input_size) for m in bb.members]
    assert sizes == [("efficientnet-lite0", 224), ("efficientnet-lite1", 240)]
    # Lite0 4,652,008 + Lite1 5,416,680, their 1000-way classifiers included
    assert sum(p.numel() for p in bb.parameters()) == 4_652_008 + 5_416_680 == 10_068_688
    assert bb.feature_dim == 2 * 1280 and bb.input_size == 240 and bb.power == 0.5
    teacher = ProtoNetTeacher(bb)
    assert sum(p.numel() for p in teacher.parameters()) == 10_068_688 + 2  # + scale, bias
    assert teacher.meta()["arch"] == (
        "protonet:ensemble(efficientnet-lite0@224+efficientnet-lite1@240;power=0.5)"
    )
    # the four-backbone probe, Lite2 included
    four = build_backbone(
        "efficientnet-lite0@96+efficientnet-lite0@224+efficientnet-lite1@240+efficientnet-lite2@260",
        pretrained=False,
        feature_cache=False,
    )
    assert sum(p.numel() for p in four.parameters()) == 2 * 4_652_008 + 5_416_680 + 6_092_072
    assert four.feature_dim == 5120 and four.power == 1.0


def test_default_teacher_exact_size(tmp_path):
    """effnet-lite-student with the shipped Fashion-MNIST pretrained Conv4 (113,088 parameters)."""
    from tinyshot.models.ensemble import with_student
    from tinyshot.pipeline.student_stage import SHIPPED_STUDENTS

    shipped = next(SHIPPED_STUDENTS.glob("pretrain-conv4-fashion-mnist-base-*.pt"))
    spec, _ = with_student("effnet-lite-student", shipped)
    bb = build_backbone(spec, input_size=96, pretrained=False, feature_cache=False)
    sizes = [(m.arch_id, m.input_size) for m in bb.members]
    assert sizes == [("student-conv4", 32), ("efficientnet-lite0", 96), ("efficientnet-lite1", 96)]
    assert sum(p.numel() for p in bb.members[0].parameters()) == 113_088
    assert sum(p.numel() for p in bb.parameters()) == 113_088 + 4_652_008 + 5_416_680
    assert bb.feature_dim == 256 + 2 * 1280 and bb.power == 0.5


def test_cached_features_equal_fresh_ones(tmp_path):
    spec = "efficientnet-lite0@32+efficientnet-lite0@48;power=0.5"
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fresh = build_backbone(spec, feature_cache=False).eval()
    with torch.no_grad():
        want = fresh(x)
        cold = build_backbone(spec, feature_cache=tmp_path).eval()
        got_cold = cold(x)
        # a new instance reads the shards from disk: every image a hit, nothing recomputed
        warm = build_backbone(spec, feature_cache=tmp_path).eval()
        got_warm = warm(x)
        got_perm = warm(x[[5, 0, 3]])
    assert torch.equal(got_cold, want) and torch.equal(got_warm, want)
    fresh.chunk_size = 4  # members run on chunks: same features up to float rounding
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got_perm, want[[5, 0, 3]])
    assert [warm._cache(i).hits for i in range(2)] == [9, 9]
    assert [warm._cache(i).misses for i in range(2)] == [0, 0]
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 2  # one shard per member
    # uint8/255 and float inputs of the same picture share keys
    u8 = (x * 255).round().to(torch.uint8)
    assert image_keys(u8.float() / 255) == image_keys((u8.float() / 255).clone())
    # different weights never read these features
    with torch.no_grad():
        warm.members[0].net._bn0.running_mean.add_(1.0)
        changed = warm(x)
    assert warm._cache(0).misses == 6 and not torch.equal(changed[:, :1280], want[:, :1280])
    assert torch.equal(changed[:, 1280:], want[:, 1280:])


def test_cache_is_bypassed_with_gradients(tmp_path):
    torch.manual_seed(0)
    bb = build_backbone("conv4@16+conv4@24", feature_cache=tmp_path)
    x = torch.rand(4, 3, 16, 16)
    f = bb(x)  # training mode, gradients on: no cache, differentiable
    assert f.requires_grad and not list(tmp_path.rglob("*.safetensors"))
    f.sum().backward()
    assert all(p.grad is not None for p in bb.members[0].parameters())


def test_feature_cache_computes_only_misses(tmp_path):
    calls: list[int] = []

    def backbone(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    cache = FeatureCache(tmp_path)
    x = torch.rand(5, 3, 4, 4)
    a = cache.features(backbone, x[:3])
    b = cache.features(backbone, x)
    assert calls == [3, 2] and torch.equal(b[:3], a) and len(cache) == 5
    assert torch.equal(b, x.mean(dim=(2, 3)))


def test_build_teacher_on_an_ensemble_spec(tmp_path):
    teacher = build_teacher("conv4@16+conv4@24", feature_cache=tmp_path).eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    teacher.set_support(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    p = teacher.predict_proba(x)
    assert p.shape == (6, 3) and torch.allclose(p.sum(1), torch.ones(6))
    assert teacher.feature_dim == teacher.backbone.feature_dim == 2 * 64  # conv4 at 16 and 24 px


def test_pipeline_teacher_accepts_an_ensemble_spec():
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.episode_data import EpisodeData
    from tinyshot.pipeline.teacher_stage import build_episode_teacher

    g = torch.Generator().manual_seed(2)
    support = (torch.rand(4, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    data = EpisodeData(["a", "b"], [[], []], support, torch.tensor([0, 0, 1, 1]))
    config = PipelineConfig(teacher="conv4@16+conv4@24;power=0.5", teacher_input_size=96)
    teacher = build_episode_teacher(data, config)
    # explicit member sizes win over teacher_input_size
    assert [m.input_size for m in teacher.backbone.members] == [16, 24]
    assert teacher.predict_proba(support.float() / 255).shape == (4, 2)


def _student_checkpoint(tmp_path, input_size: int = 24):
    from tinyshot.models.students import build_student, save_student

    torch.manual_seed(3)
    student = build_student("conv4", num_classes=4, input_size=input_size).eval()
    for m in student.modules():  # non-trivial batch-norm statistics, to see they are used
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return student, save_student(student, tmp_path / "pretrained.pt")


def test_student_member_is_the_students_frozen_backbone(tmp_path):
    student, path = _student_checkpoint(tmp_path)
    member = build_backbone(f"student:{path}")
    assert member.input_size == 24 and member.feature_dim == student.feature_dim == 64 * 1 * 1
    assert member.arch_id == "student-conv4"
    assert not any(p.requires_grad for p in member.parameters())
    member.train()  # frozen: eval-mode batch norm even inside a training teacher
    x = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(member(x), student.features(x))
    # in an ensemble at the teacher's input size 96 it keeps the student's own size
    ens = build_backbone(f"efficientnet-lite0+student:{path};power=0.5", input_size=96)
    assert [m.input_size for m in ens.members] == [96, 24]


@pytest.mark.parametrize("side", [20, 28, 64])
def test_student_member_resizes_like_the_students_own_images(tmp_path, side):
    """Its input is the student's view of the image (PIL bicubic) to within 0.5/255 on average
    (on real Fashion-MNIST images 28 -> 32 px: 0.20/255); torch's plain bilinear resize, the
    other backbones' one, is several times further off (there: 2.44/255)."""
    import numpy as np
    from PIL import Image

    from tinyshot.data.transforms import images_to_tensor

    _, path = _student_checkpoint(tmp_path)
    member = build_backbone(f"student:{path}")
    rng = np.random.default_rng(side)
    small = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255
    want = images_to_tensor([im], 24)
    got = member.prepare(x)
    err = float((got - want).abs().mean())
    assert err <= 0.5 / 255
    plain = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear")
    assert float((plain - want).abs().mean()) > 3 * err


def test_student_member_is_bound_by_the_pipeline_or_left_out_with_a_warning(tmp_path):
    from tinyshot.models.ensemble import uses_student, with_student

    spec = ENSEMBLES["effnet-lite-student"]
    assert uses_student("effnet-lite-student") and uses_student("student")
    assert not uses_student("effnet-lite-ensemble") and not uses_student("student:x.pt")
    bound, warning = with_student("effnet-lite-student", tmp_path / "s.pt")
    assert warning is None
    assert (
        bound
        == f"student:{tmp_path / 's.pt'}+efficientnet-lite0@96+efficientnet-lite1@96;power=0.5"
    )
    assert spec.startswith("student+")
    left, warning = with_student("student+conv4@16;power=0.5", None)
    assert left == "conv4@16;power=0.5" and "left out" in warning
    assert with_student("conv4", None) == ("conv4", None)
    with pytest.raises(ConfigError, match="pretrained student"):
        with_student("student", None)
    with pytest.raises(ConfigError, match=r"student:<path\.pt>"):
        build_backbone("student")
    with pytest.raises(Exception, match="not found"):
        build_backbone(f"student:{tmp_path / 'missing.pt'}")


def test_pipeline_teacher_uses_the_runs_pretrained_student(tmp_path, caplog):
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.episode_data import EpisodeData
    from tinyshot.pipeline.teacher_stage import build_episode_teacher

    student, path = _student_checkpoint(tmp_path, input_size=16)
    g = torch.Generator().manual_seed(2)
    support = (torch.rand(4, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    data = EpisodeData(["a", "b"], [[], []], support, torch.tensor([0, 0, 1, 1]))
    config = PipelineConfig(teacher="student+conv4@16;power=0.5", teacher_input_size=96)
    teacher = build_episode_teacher(data, config, path)
    first = teacher.backbone.members[0]
    assert first.arch_id == "student-conv4" and first.input_size == 16
    x = support.float() / 255
    torch.testing.assert_close(teacher.backbone.member_features(0, x), student.features(x))
    with caplog.at_level("WARNING"):
        alone = build_episode_teacher(data, config, None)
    assert [m.arch_id for m in alone.backbone.members] == ["conv4"]
    assert "left out" in caplog.text
