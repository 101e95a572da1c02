"""Presets (--preset demo/paper, configs/paper.toml) and the GPU check at a small size on CPU."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tinyshot.cli import build_parser
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.errors import ConfigError
from tinyshot.pipeline.commands import _pipeline_overrides
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.presets import PRESETS, merge_config, preset

ROOT = Path(__file__).resolve().parents[2]


def test_paper_toml_equals_the_preset():
    data = tomllib.loads((ROOT / "configs" / "paper.toml").read_text())
    assert data == PRESETS["paper"]


def test_paper_preset_values():
    cfg = PipelineConfig.from_dict(preset("paper"))
    spec = SpecializeConfig.from_dict(cfg.specialize).validate()
    assert (spec.ti_steps, spec.ti_lr, spec.num_inference_steps) == (5000, 1e-3, 50)
    assert (spec.guidance, spec.nti_inner_steps, spec.nti_lr) == (7.5, 10, 1e-2)
    assert (cfg.synthetic_per_class, cfg.distill["iterations"]) == (4000, 10000)
    assert (cfg.student, cfg.image_size, cfg.teacher_input_size) == ("resnet12", 84, 224)
    assert cfg.teacher == "dino-vitb16"


def test_paper_preset_with_a_dinov2_teacher(tmp_path, monkeypatch):
    """`--preset paper --teacher dinov2-base`: DINOv2 ViT-B/14 in DINO's place, at the paper's
    224 px (a small local Dinov2Model stands in for the facebook/dinov2-base download)."""
    import torch
    from transformers import Dinov2Model

    from tinyshot.models.backbones import Dinov2Backbone, build_tiny_dinov2
    from tinyshot.pipeline.episode_data import EpisodeData
    from tinyshot.pipeline.teacher_stage import build_episode_teacher

    args = build_parser().parse_args(
        ["fit", "data", "--out", "run", "--preset", "paper", "--teacher", "dinov2-base"]
    )
    cfg = PipelineConfig.from_dict(_pipeline_overrides(args, {}))
    assert (cfg.teacher, cfg.teacher_input_size, cfg.student) == ("dinov2-base", 224, "resnet12")

    folder = build_tiny_dinov2(tmp_path / "dinov2")
    real, asked = Dinov2Model.from_pretrained, []

    def from_pretrained(source, *a, **kw):
        asked.append(source)
        return real(str(folder))

    monkeypatch.setattr(Dinov2Model, "from_pretrained", from_pretrained)
    cfg.device = "cpu"
    support = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    data = EpisodeData(["a", "b"], [[], []], support, torch.tensor([0, 0, 1, 1]))
    teacher = build_episode_teacher(data, cfg)
    assert asked == ["facebook/dinov2-base"]
    assert isinstance(teacher.backbone, Dinov2Backbone) and teacher.input_size == 224
    assert teacher.predict_proba(torch.rand(3, 3, 40, 40)).shape == (3, 2)


def test_paper_preset_sets_every_specialize_default():
    # Every specialization knob the demo sizes down has its paper value in the preset.
    assert set(PipelineConfig().specialize) - set(PRESETS["paper"]["specialize"]) == set()
    # ... and every LoRA knob its DataDream value
    assert set(PipelineConfig().lora) - set(PRESETS["paper"]["lora"]) == set()
    assert PRESETS["paper"]["lora"]["lr"] == 1e-4 and PRESETS["paper"]["lora"]["rank"] == 16


def test_demo_preset_is_todays_defaults():
    assert PipelineConfig.from_dict(preset("demo")).to_dict() == PipelineConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset("nope")


def test_precedence_preset_then_file_then_flags():
    args = build_parser().parse_args(
        ["fit", "data", "--out", "run", "--preset", "paper", "--ti-steps", "3"]
    )
    d = _pipeline_overrides(args, {"specialize": {"guidance": 5.0}, "synthetic_per_class": 7})
    assert d["specialize"] == {**PRESETS["paper"]["specialize"], "ti_steps": 3, "guidance": 5.0}
    assert d["synthetic_per_class"] == 7 and d["student"] == "resnet12"
    assert merge_config({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}}


def test_benchmark_preset_goes_under_each_method():
    from tinyshot.pipeline.benchmark import DEFAULT_EPISODE_FN
    from tinyshot.pipeline.commands import apply_preset
    from tinyshot.pipeline.config import DEFAULT_METHODS
    from tinyshot.pipeline.task_config import pipeline_config_from_methods

    methods = apply_preset(None, "paper", DEFAULT_EPISODE_FN)
    assert sorted(methods) == sorted(DEFAULT_METHODS)  # the LoRA methods only when named
    assert not any(m.startswith("lora") for m in methods)
    cfg = pipeline_config_from_methods(methods)
    assert (cfg.synthetic_per_class, cfg.student, cfg.image_size) == (4000, "resnet12", 84)
    mine = apply_preset({"tint": {"synthetic_per_class": 10}}, "paper", DEFAULT_EPISODE_FN)
    assert mine["tint"]["synthetic_per_class"] == 10 and list(mine) == ["tint"]
    assert mine["tint"]["specialize"]["ti_steps"] == 5000


@pytest.mark.parametrize("command", ["fit", "demo", "benchmark"])
def test_help_lists_presets(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "--preset" in out and "paper" in out and "demo" in out


def test_gpu_check_small_on_cpu(tmp_path, capsys):
    from tinyshot.pipeline.gpu_check import run_gpu_check

    report = run_gpu_check(
        tmp_path,
        "cpu",
        bench=False,  # the bench is covered by tests/diffusion/test_sd15.py
        width_divisor=10,
        latent_size=8,
        fit_overrides={
            # Real-ESRGAN (the default "sr" here) is covered by test_tint_upscale; on a busy
            # 2-core CPU it would triple this test's time.
            "specialize": {
                "ti_steps": 2,
                "num_inference_steps": 3,
                "nti_inner_steps": 2,
                "upscale": "bilinear",
            },
            "synthetic_per_class": 4,
            "generation_batch_size": 4,
            "teacher_input_size": 32,
            "student": "conv4",
            "image_size": 32,
            "distill": {"iterations": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2},
        },
        support_size=28,
        teacher_overrides={"batch_size": 2, "input_size": 32, "repeats": 1},
    )
    stored = json.loads((tmp_path / "gpu-check.json").read_text())
    assert stored["fit"]["synthetic_images"] == 8 and stored["device"] == "cpu"
    assert "sr_unavailable" not in report and report["stages"]["fit_s"] > 0
    timings = stored["fit"]["timings"]
    assert {"specialize_s", "generate_tint_s", "teacher_s", "distill_s"} <= set(timings)
    assert all(v > 0 for v in timings.values())
    assert Path(stored["fit"]["onnx"]).is_file() and stored["fit"]["onnx_bytes"] > 0
    assert (tmp_path / "models" / "sd15" / "model_index.json").is_file()
    assert (tmp_path / "models" / "dino-vitb16" / "config.json").is_file()
    teachers = stored["teachers"]
    assert list(teachers) == ["dino-vitb16", "dinov2-small", "dinov2-base"]
    assert all(
        t["fp32_ms_per_image"] > 0 and "fp16_ms_per_image" not in t for t in teachers.values()
    )
    assert teachers["dinov2-small"]["feature_dim"] == 32  # 384 / 10, to a multiple of 16
    from tinyshot.pipeline.gpu_check import _print_summary

    _print_summary(stored)
    out = capsys.readouterr().out
    assert out.startswith("device: cpu (CPU)") and "fit: " in out and "ONNX" in out
    assert "teacher dinov2-base: " in out and "ms/image fp32" in out
