"""Episodic evaluation: student/teacher accuracy, per-episode JSON with t-intervals, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tinyshot.cli import main
from tinyshot.data.episode_io import write_episodes
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.data.transforms import images_to_tensor
from tinyshot.errors import DataError
from tinyshot.evaluation.episodic import (
    EpisodeResults,
    evaluate_student,
    evaluate_teacher_episode,
    evaluate_teacher_on_episode_file,
)
from tinyshot.evaluation.stats import mean_confidence_interval
from tinyshot.models.teacher import build_teacher

CLASSES = ("red", "green", "blue")
PER_CLASS, SHOTS = 8, 2


class ChannelArgmax(torch.nn.Module):
    """A 'student' that predicts the brightest colour channel."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.mean(dim=(2, 3)) + 0 * self.dummy


def _colour(c: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    img = rng.uniform(0, 90, (size, size, 3))
    img[..., c] += 120
    return img.astype(np.uint8)


@pytest.fixture
def episode_file(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_colour(c, rng)).save(root / name / f"{i}.png")
    ds = load_dataset("imagefolder", "all", root)
    eps = sample_episodes(ds, n=3, ways=3, shots=SHOTS, queries=None, seed=0)
    path = tmp_path / "episodes.json"
    meta = {"dataset": {"name": "imagefolder", "split": "all", "root": str(root)}}
    write_episodes(path, eps, {**meta, "ways": 3, "shots": SHOTS, "queries": None, "seed": 0})
    return path, ds, eps


def test_evaluate_student_counts_correct_predictions():
    x = torch.zeros(10, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    for i, c in enumerate([0, 1, 2, 0, 1, 2, 1, 1, 1, 1]):  # 7 of 10 right
        x[i, c] = 1.0
    student = ChannelArgmax().train()
    assert evaluate_student(student, x, y, batch_size=3) == pytest.approx(0.7)
    assert student.training
    assert evaluate_student(student, (x * 255).to(torch.uint8), y) == pytest.approx(0.7)
    with pytest.raises(DataError, match="labels"):
        evaluate_student(student, x, y[:5])


def test_episode_results_summary_json_and_table(tmp_path):
    r = EpisodeResults({"note": "t"})
    accs = [0.8, 0.9, 0.85, 0.7]
    for i, a in enumerate(accs):
        r.add("student", i, a, n_query=100)
    r.add("teacher", 0, 0.95, n_query=100)
    s = r.summary()
    mean, half = mean_confidence_interval(accs)
    assert s["student"]["mean"] == pytest.approx(mean) and s["student"]["ci"] == pytest.approx(half)
    assert s["student"]["n_episodes"] == 4 and s["teacher"]["ci"] is None  # one episode: no CI
    path = r.write(tmp_path / "r.json")
    doc = json.loads(path.read_text())  # strict JSON (no NaN)
    assert [e["accuracy"] for e in doc["per_episode"]["student"]] == accs
    back = EpisodeResults.load(path)
    assert back.summary() == s and back.meta == {"note": "t"}
    text = r.render()
    assert "student" in text and f"{100 * mean:.2f} ± {100 * half:.2f}" in text and "n/a" in text
    with pytest.raises(DataError):
        r.add("student", 9, 85.0)  # percent instead of a fraction


def _manual_teacher_accs(teacher, ds, eps):
    out = []
    for ep in eps:
        s_idx, s_lab = ep.support_indices(ds)
        q_idx, q_lab = ep.query_indices(ds)
        teacher.set_support(images_to_tensor(ds.load_images(s_idx), 16), torch.from_numpy(s_lab))
        p = teacher.predict_proba(images_to_tensor(ds.load_images(q_idx), 16)).argmax(1)
        out.append(float((p == torch.from_numpy(q_lab)).double().mean()))
    return out


class CountingTeacher:
    def __init__(self, inner):
        self.inner, self.episodes = inner, 0
        self.input_size = inner.input_size

    def set_support(self, x, y):
        self.episodes += 1
        return self.inner.set_support(x, y)

    def predict_proba(self, x, temperature=1.0, batch_size=64):
        return self.inner.predict_proba(x, temperature, batch_size)


def test_teacher_over_episode_file_matches_manual_and_resumes(episode_file, tmp_path):
    path, ds, eps = episode_file
    torch.manual_seed(0)
    teacher = CountingTeacher(build_teacher("conv4", input_size=16))
    want = _manual_teacher_accs(teacher.inner, ds, eps)
    out = tmp_path / "res.json"
    res = evaluate_teacher_on_episode_file(teacher, path, out, teacher_name="conv4", batch_size=5)
    assert res.accuracies("teacher") == pytest.approx(want)
    doc = json.loads(out.read_text())
    per = doc["per_episode"]["teacher"]
    assert [e["n_query"] for e in per] == [3 * (PER_CLASS - SHOTS)] * 3  # all remaining queries
    assert doc["summary"]["teacher"]["mean"] == pytest.approx(np.mean(want))
    assert len(doc["meta"]["episodes_sha256"]) == 64

    # Resume: drop the last episode from the file, rerun -> only that episode is evaluated.
    doc["per_episode"]["teacher"] = per[:2]
    out.write_text(json.dumps(doc))
    teacher.episodes = 0
    again = evaluate_teacher_on_episode_file(teacher, path, out, teacher_name="conv4")
    assert teacher.episodes == 1 and again.accuracies("teacher") == pytest.approx(want)
    with pytest.raises(DataError, match="another teacher"):
        evaluate_teacher_on_episode_file(teacher, path, out, teacher_name="other")


def test_evaluate_teacher_episode_direct():
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(6, 3, 16, 16, generator=g)
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(0)
    t = build_teacher("conv4", input_size=16)
    # Queries identical to the supports are classified by their own prototypes' neighbours.
    acc = evaluate_teacher_episode(t, sx, sy, [sx[:3], sx[3:]], sy)
    manual = float((t.predict_proba(sx).argmax(1) == sy).double().mean())
    assert acc == pytest.approx(manual)


def test_cli_evaluate(episode_file, tmp_path, capsys):
    path, _, _ = episode_file
    out = tmp_path / "cli.json"
    rc = main(
        [
            "evaluate",
            "--episodes",
            str(path),
            "--teacher",
            "conv4",
            "--teacher-input-size",
            "16",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--limit",
            "2",
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert len(doc["per_episode"]["teacher (conv4)"]) == 2
    assert "teacher (conv4)" in capsys.readouterr().out
    assert main(["evaluate", "--episodes", str(tmp_path / "none.json"), "--teacher", "conv4"]) == 2
    assert "none.json" in capsys.readouterr().err


def test_student_on_episode_uses_all_queries(episode_file):
    from tinyshot.evaluation.episodic import evaluate_student_on_episode

    _, ds, eps = episode_file
    student = ChannelArgmax()
    student.input_size = 16
    acc, n = evaluate_student_on_episode(student, ds, eps[0], batch_size=4)
    q_idx, q_lab = eps[0].query_indices(ds)
    x = images_to_tensor(ds.load_images(q_idx), 16)
    want = float((student(x).argmax(1) == torch.from_numpy(q_lab)).double().mean())
    assert n == 3 * (PER_CLASS - SHOTS) and acc == pytest.approx(want)
