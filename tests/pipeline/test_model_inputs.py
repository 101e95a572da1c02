"""Each model sees its own input (issues 12.2 and 14.3): the generator the images prepared as
its training images were, the teacher the originals at its own size, the student its own size;
generated and real images share one frame; config.json says what was used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episode
from tinyshot.data.transforms import (
    ImagePrep,
    crop_generator_frame,
    frame_brightness,
    images_to_uint8,
    resize_uint8,
    teacher_view,
)
from tinyshot.diffusion.model import read_image_prep
from tinyshot.diffusion.pretrain import default_generator_path, pad_to
from tinyshot.diffusion.upscale import prepare_for_generator
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode_data import load_episode_data
from tinyshot.pipeline.synthetic import student_synthetic, teacher_synthetic
from tinyshot.pipeline.teacher_stage import build_episode_teacher

FASHION_PREP = ImagePrep("pad", 32, 28, 0, True)


@pytest.fixture(scope="module")
def novel():
    return load_dataset("fashion-mnist", "novel-train"), load_dataset("fashion-mnist", "novel-test")


def _supports(ds, n: int = 6) -> list[Image.Image]:
    return [ds.load_image(int(i)) for c in range(3) for i in ds.indices_of(c)[: n // 3]]


def test_shipped_generators_record_their_training_preparation():
    from tinyshot.data.fashion_mnist import load_fashion_mnist
    from tinyshot.diffusion.pretrain.recipes.glyphs import generator_images

    assert read_image_prep(default_generator_path("fashion-mnist")) == FASHION_PREP
    glyph = read_image_prep(default_generator_path("glyphs"))
    assert glyph == ImagePrep("pad", 32, 32, 255, True)
    # The helper reproduces the recipes' own preparation, pixel for pixel.
    raw = load_fashion_mnist("train").images[:8]
    got = prepare_for_generator([Image.fromarray(a) for a in raw], FASHION_PREP)
    want = torch.from_numpy(pad_to(raw, 32)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(got, want)
    small = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    got = prepare_for_generator([Image.fromarray(a) for a in small], glyph)
    want = torch.from_numpy(generator_images(small, 32)).float().div(255).unsqueeze(1)
    assert torch.equal(got, want.expand(-1, 3, -1, -1))
    # colour input to a grey generator is made grey; larger input shrinks to the content size
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    x = prepare_for_generator([big], FASHION_PREP)[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert float(x[:, :2].abs().sum()) == 0 and float(x[:, 2:30, 2:30].sum()) > 0


def test_models_without_a_record_resize(tmp_path):
    from tinyshot.diffusion.model import build_tiny_diffusion_model

    folder = tmp_path / "tiny"
    build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0).save(folder)
    assert read_image_prep(folder) == ImagePrep("resize", 16)
    assert read_image_prep("org/sd-model-not-here").mode == "resize"
    meta = json.loads((folder / "tinyshot.json").read_text())
    meta["image_prep"] = {"mode": "crop"}
    (folder / "tinyshot.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"tinyshot.json.*mode"):
        read_image_prep(folder)


def test_specialization_sees_a_28px_support_zero_padded(novel):
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.specialize import prepare_support_latents
    from tinyshot.diffusion.upscale import prepare_images

    model = load_diffusion_model(default_generator_path("fashion-mnist"))
    pil = _supports(novel[0], 3)
    latents, _ = prepare_support_latents(model, [pil], SpecializeConfig())
    padded = torch.from_numpy(pad_to(np.stack([np.asarray(im.convert("L")) for im in pil]), 32))
    want = padded.float().div(255).mul(2).sub(1).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(latents[0], want)
    stretched = prepare_images(pil, 32, "auto") * 2 - 1  # the old path
    assert float((stretched - want).abs().mean()) > 0.05


def test_student_and_teacher_see_generated_and_real_images_in_one_frame(novel):
    pil = _supports(novel[0])
    real_student = images_to_uint8(pil, 32)
    # A generator that reproduced its (padded) supports perfectly:
    generated = (prepare_for_generator(pil, FASHION_PREP) * 255).round().to(torch.uint8)
    seen = student_synthetic(generated, FASHION_PREP, 32)
    assert torch.equal(seen, real_student)
    assert frame_brightness(seen) == frame_brightness(real_student) > 0.01
    # The old path (the generator's canvas resized as is) shows the student a black frame.
    assert frame_brightness(resize_uint8(generated, 32)) == 0.0
    # The teacher gets the 28 px originals, generated ones included.
    assert torch.equal(
        teacher_synthetic(generated.float() / 255, FASHION_PREP, 96), images_to_uint8(pil, None)
    )
    assert torch.equal(teacher_view(pil, 96), images_to_uint8(pil, None))
    # resize-mode generators' images are not cropped
    assert torch.equal(crop_generator_frame(generated, ImagePrep("resize", 32)), generated)


def test_teacher_view_keeps_originals_and_resizes_only_when_it_must():
    rng = np.random.default_rng(0)

    def imgs(*sides):
        return [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sides]

    assert teacher_view(imgs(64, 64), 96).shape[-1] == 64  # the backbone resizes 64 -> 96
    assert teacher_view(imgs(128, 128), 96).shape[-1] == 96
    assert teacher_view(imgs(64, 48), 96).shape[-1] == 96
    assert teacher_view(imgs(64, 48), None).shape[-1] == 64


def test_episode_teacher_gets_the_originals_not_the_students_copies(novel, monkeypatch):
    from tinyshot.models.teacher import ProtoNetTeacher

    support_ds, query_ds = novel
    ep = sample_episode(support_ds, 2, 2, 3, seed=0, query_ds=query_ds)
    cfg = PipelineConfig(
        methods=("teacher", "support-only"),
        teacher="conv4",
        teacher_input_size=40,
        image_size=16,
    ).validate()
    data = load_episode_data(ep, support_ds, query_ds, None, cfg, seed=0)
    assert data.support.shape[-1] == 16 and data.query.shape[-1] == 16
    assert data.teacher_support.shape[-1] == 28 and data.teacher_query.shape[-1] == 28
    seen = {}
    real = ProtoNetTeacher.set_support

    def spy(self, images, labels, batch_size=64):
        seen["shape"] = tuple(images.shape)
        return real(self, images, labels, batch_size)

    monkeypatch.setattr(ProtoNetTeacher, "set_support", spy)
    build_episode_teacher(data, cfg)
    assert seen["shape"] == (4, 3, 28, 28)


def _write_classes(root: Path, ds, names: dict[str, int], k: int) -> None:
    for folder, c in names.items():
        d = root / folder
        d.mkdir(parents=True)
        for j, i in enumerate(ds.indices_of(c)[:k]):
            ds.load_image(int(i)).resize((40, 40)).save(d / f"{j}.png")


def _tiny_fit(novel, tmp_path, **settings) -> tuple[list[str], Path]:
    """A 2-class folder, a tiny generator and a config file: the fit argv and its run folder."""
    from tinyshot.diffusion.model import build_tiny_diffusion_model

    gen = tmp_path / "gen"
    build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0).save(gen)
    data = tmp_path / "data"
    _write_classes(data, novel[0], {"ankle_boot": 4, "sandal": 0}, k=3)
    cfg = {"generator": str(gen), "specialize": {"num_inference_steps": 2}, **settings}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    return ["fit", str(data), "--out", str(run), "--config", str(tmp_path / "cfg.json")], run


def test_fit_without_base_says_it_used_none_and_name_uses_folder_names(novel, tmp_path, capsys):
    from tinyshot.cli import main
    from tinyshot.diffusion.store import ImageStore

    argv, run = _tiny_fit(
        novel,
        tmp_path,
        synthetic_per_class=5,
        teacher="conv4",
        teacher_input_size=24,
        image_size=16,
        distill={"iterations": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2},
    )
    assert main([*argv, "--method", "name"]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["pretrain_student"] is False and saved["base_images"] == 0
    inputs = json.loads((run / "fit.json").read_text())["inputs"]
    assert inputs["student"] == {"input_size": 16, "base_pretrained": False, "base_images": 0}
    assert inputs["teacher"]["input_size"] == 24
    assert inputs["teacher"]["backbone"] == "conv4"
    assert "left out" not in (run / "log.txt").read_text()
    assert inputs["generator"]["image_prep"]["mode"] == "resize"
    html = (run / "report.html").read_text()
    assert "without base-class pretraining and 0 base images" in html
    assert "pretrain_student&quot;: true" not in html and '"pretrain_student": true' not in html
    store = ImageStore(run / "synthetic" / "name")
    assert store.settings["prompts"] == ["a photo of a ankle boot", "a photo of a sandal"]
    assert len(store) == 10 and not (run / "specialize").exists()
    capsys.readouterr()
    assert main([*argv, "--method", "name"]) == 0  # resumes with the same effective config
    bad = ["fit", argv[1], "--out", str(tmp_path / "r2"), "--method", "support+base"]
    assert main(bad) == 2
    assert "--base" in capsys.readouterr().err
    # A teacher with the base-pretrained student as a member, named without --base: an error
    # before any work, naming both ways out (not a teacher that silently lacks a member).
    for teacher in ("effnet-lite-student", "student+conv4;power=0.5"):
        r3 = tmp_path / "r3"
        assert main(["fit", argv[1], "--out", str(r3), "--teacher", teacher]) == 2
        err = capsys.readouterr().err
        assert f"teacher {teacher!r} has a 'student' member" in err
        assert "pass --base" in err and "leave --teacher out" in err
        assert not r3.exists()


def test_fit_default_teacher_is_fits_own_and_never_leaves_a_member_out():
    """fit's default teacher (docs/models.md, "fit's default teacher"): ImageNet members at
    224-240 px without --base, nothing for `with_student` to leave out; with --base, the
    demo's teacher with its base-pretrained student. The demo's and the benchmark's default
    stays as it was."""
    from tinyshot.models.ensemble import uses_student, with_student
    from tinyshot.pipeline.config import DEFAULT_TEACHER
    from tinyshot.pipeline.fit import (
        FIT_TEACHER,
        FIT_TEACHER_WITH_BASE,
        default_fit_config,
        fit_teacher_defaults,
    )

    assert FIT_TEACHER == "effnet-lite-ensemble" and FIT_TEACHER_WITH_BASE == DEFAULT_TEACHER
    assert fit_teacher_defaults(None) == {"teacher": FIT_TEACHER, "teacher_input_size": 240}
    assert fit_teacher_defaults("fashion-mnist:base") == {
        "teacher": FIT_TEACHER_WITH_BASE,
        "teacher_input_size": 96,
    }
    # a base without student pretraining has no student to bind: the default without one
    assert fit_teacher_defaults("fashion-mnist:base", pretrain_student=False)["teacher"] == (
        FIT_TEACHER
    )
    assert not uses_student(FIT_TEACHER) and with_student(FIT_TEACHER, None)[1] is None
    assert uses_student(FIT_TEACHER_WITH_BASE)
    cfg = default_fit_config()
    assert cfg.teacher == FIT_TEACHER and cfg.teacher_input_size == 240
    assert cfg.methods == ("tint",)
    assert default_fit_config("fashion-mnist:base").teacher == FIT_TEACHER_WITH_BASE
    assert PipelineConfig().teacher == DEFAULT_TEACHER == "effnet-lite-student"
    assert PipelineConfig().teacher_input_size == 96


def test_fit_without_base_or_teacher_runs_fits_default_teacher_without_a_warning(novel, tmp_path):
    """The default path: no --teacher, no --base. config.json records fit's default teacher
    at 240 px, the teacher built is exactly it, and no teacher warning or note is logged."""
    from tinyshot.cli import main
    from tinyshot.models.backbones import build_ensemble
    from tinyshot.pipeline.fit import FIT_TEACHER

    argv, run = _tiny_fit(
        novel,
        tmp_path,
        synthetic_per_class=3,
        image_size=16,
        distill={"iterations": 2, "batch_size": 6, "eval_every": 2, "checkpoint_every": 2},
    )
    assert main([*argv, "--method", "name"]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["teacher"] == FIT_TEACHER and saved["teacher_input_size"] == 240
    inputs = json.loads((run / "fit.json").read_text())["inputs"]
    assert inputs["teacher"]["backbone"] == build_ensemble(FIT_TEACHER).arch_id
    assert "student" not in inputs["teacher"]["backbone"]
    log = (run / "log.txt").read_text()
    assert "left out" not in log and "'student' member" not in log
    assert not [w for w in json.loads((run / "health.json").read_text())["warnings"]
                if "teacher '" in w]  # fmt: skip


def test_episode_config_records_the_effective_inputs(novel):
    from tinyshot.pipeline.config import effective_inputs

    cfg = PipelineConfig(methods=("teacher", "support+base", "name"), base_images=1500)
    eff = effective_inputs(cfg, None)
    assert eff["pretrain_student"] is False and eff["base_images"] == 0
    assert eff["generator_image_prep"] == FASHION_PREP.to_dict()
    eff = effective_inputs(cfg, novel[1])  # 5000 images: all 1500 used, pretraining on
    assert eff["pretrain_student"] is True and eff["base_images"] == 1500
    only = PipelineConfig(methods=("teacher", "support-only"))
    assert effective_inputs(only, novel[1])["base_images"] == 0


def test_evaluate_and_the_teacher_baseline_score_the_pipeline_teacher(tmp_path):
    """One teacher figure three ways: a pipeline episode's teacher row, the benchmark's teacher
    baseline and `tinyshot evaluate`, each with the default teacher, its `student` member bound
    to the shipped pretrained Conv4 and its images the pipeline's teacher view."""
    from tinyshot.cli import build_parser, main
    from tinyshot.data.episode_io import read_episodes
    from tinyshot.pipeline.baselines import DEFAULT_TEACHER, run_baseline_episode
    from tinyshot.pipeline.benchmark import EpisodeTask, prepare_episodes
    from tinyshot.pipeline.benchmark.tasks import load_task_datasets
    from tinyshot.pipeline.episode_data import load_episode_data
    from tinyshot.pipeline.student_stage import SHIPPED_STUDENTS, pretrained_student_path
    from tinyshot.pipeline.task_config import base_dataset, bind_teacher_spec
    from tinyshot.pipeline.teacher_stage import build_episode_teacher, teacher_accuracy

    assert PipelineConfig().teacher == DEFAULT_TEACHER
    assert (
        build_parser().parse_args(["evaluate", "--episodes", "e.json"]).teacher == DEFAULT_TEACHER
    )
    path = prepare_episodes(
        tmp_path / "eps.json", "fashion-mnist", 1, split="novel-train",
        query_split="novel-test", ways=3, shots=2, queries=8, seed=5,
    )  # fmt: skip
    episodes, meta = read_episodes(path)
    spec, warning = bind_teacher_spec(DEFAULT_TEACHER, meta)
    shipped = next(SHIPPED_STUDENTS.glob("pretrain-conv4-fashion-mnist-base-*.pt"))
    assert warning is None and spec.startswith(f"student:{shipped}+efficientnet-lite0@96")

    config = PipelineConfig(methods=("teacher",))
    support_ds, query_ds = load_task_datasets(meta)
    data = load_episode_data(episodes[0], support_ds, query_ds, None, config, 0)
    pretrained = pretrained_student_path(base_dataset(meta), config)
    assert pretrained == shipped
    teacher = build_episode_teacher(data, config, pretrained)
    pipeline_acc = teacher_accuracy(teacher, data.teacher_query, data.query_labels)

    task = EpisodeTask(0, episodes[0], meta, {"teacher": {}}, 0, str(tmp_path), device="cpu")
    row = run_baseline_episode(task)["teacher"]
    assert row["backbone"] == spec and row["queries"] == 24

    out = tmp_path / "evaluate.json"
    assert main(["evaluate", "--episodes", str(path), "--out", str(out), "--device", "cpu"]) == 0
    doc = json.loads(out.read_text())
    evaluated = doc["per_episode"][f"teacher ({DEFAULT_TEACHER})"][0]["accuracy"]
    assert 1 / 3 < pipeline_acc < 1  # informative: above chance and not trivially perfect
    assert row["accuracy"] == pipeline_acc == evaluated


def test_bind_teacher_spec_without_base_classes_leaves_the_student_out():
    from tinyshot.pipeline.task_config import bind_teacher_spec

    meta = {"dataset": {"name": "imagefolder", "root": "photos"}}
    spec, warning = bind_teacher_spec("effnet-lite-student", meta)
    assert spec == "efficientnet-lite0@96+efficientnet-lite1@96;power=0.5"
    assert warning is not None and "'student' member" in warning
    assert bind_teacher_spec("conv4", meta) == ("conv4", None)  # nothing to bind
    with pytest.raises(ConfigError, match="needs the base-class pretrained student"):
        bind_teacher_spec("student", meta)


def test_grey_generator_output_is_projected_onto_grey_exactly():
    """A grey generator's colour is model error: every stage sees the channel mean, and a
    generated image that is already grey (R = G = B) passes through bit for bit."""
    g = torch.Generator().manual_seed(0)
    tinted = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    out = crop_generator_frame(tinted, FASHION_PREP)
    assert out.shape == (4, 3, 28, 28)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    want = tinted[..., 2:30, 2:30].float().mean(1).round().to(torch.uint8)
    assert torch.equal(out[:, 0], want)
    # float images in [0,1]: the exact channel mean
    f = tinted.float() / 255
    assert torch.allclose(crop_generator_frame(f, FASHION_PREP)[:, 2], f[..., 2:30, 2:30].mean(1))
    grey = tinted[:, :1].expand(-1, 3, -1, -1)
    assert torch.equal(crop_generator_frame(grey, FASHION_PREP), grey[..., 2:30, 2:30])
    # an RGB generator's colour is kept
    rgb = ImagePrep("resize", 32)
    assert torch.equal(crop_generator_frame(tinted, rgb), tinted)
    # the teacher and the student see the projection too
    seen = teacher_synthetic(tinted, FASHION_PREP, 96)
    assert torch.equal(seen[:, 0], seen[:, 2])
    assert torch.equal(
        student_synthetic(tinted, FASHION_PREP, 32)[:, 0],
        student_synthetic(tinted, FASHION_PREP, 32)[:, 1],
    )
