"""scripts/scale-rehearsal.sh's pieces: models at the real input sizes, kill points, cuts."""

from __future__ import annotations

from tinyshot.pipeline.rehearsal import CUTS, kill_points, prepare
from tinyshot.presets import PRESETS


def test_rehearsal_models_have_the_real_input_sizes(tmp_path):
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.models.backbones import build_backbone

    sd, dino, data = prepare(tmp_path)
    model = load_diffusion_model(str(sd))
    assert model.resolution == 512 and not model.pixel_space  # SD 1.5's latent 64 x VAE 8
    assert model.unet.config.only_cross_attention and model.unet.config.block_out_channels
    teacher = build_backbone(str(dino))
    assert teacher.input_size == 224 and teacher.patch_size == 16
    assert sorted(p.parent.name for p in data.rglob("*.png")) == sorted(
        f"class_{c}" for c in range(5) for _ in range(5)
    )


def test_cuts_touch_only_per_item_compute():
    paper = PRESETS["paper"]
    assert set(CUTS) == {"specialize", "distill"}
    assert set(CUTS["specialize"]) == {"ti_steps", "num_inference_steps", "nti_inner_steps"}
    assert set(CUTS["distill"]) <= {"iterations", "eval_every", "checkpoint_every"}
    assert paper["synthetic_per_class"] == 4000 and paper["teacher_input_size"] == 224


def test_kill_points_fire_only_inside_their_stage(tmp_path):
    fit = tmp_path / "fit"
    points = kill_points(fit, images=100)
    assert not any(p() for p in points.values())
    (fit / "specialize").mkdir(parents=True)
    (fit / "specialize" / "0000.safetensors").write_bytes(b"x")
    assert points["specialize"]()
    manifest = fit / "synthetic" / "tint" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}\n" * 30)
    assert not points["specialize"]() and points["generate"]()
    manifest.write_text("{}\n" * 100)
    assert not points["generate"]()
    (fit / "student").mkdir()
    (fit / "student" / "checkpoint.pt").write_bytes(b"x")
    assert points["distill"]()
    (fit / "model.onnx").write_bytes(b"x")
    assert not points["distill"]()
