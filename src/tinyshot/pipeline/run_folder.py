"""Checks on a `fit` run folder that run before anything is written to it.

A refused run must leave no trace: no new folder, and no file of an earlier run overwritten
(classes.json of a refused rerun would otherwise disagree with the model.onnx beside it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyshot.errors import ConfigError
from tinyshot.utils.io import read_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.run_folder")


def check_out_outside_data(data_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse a run folder inside the data folder: its generated images would be read as a
    class (or as images of a class) on the next run."""
    data = Path(data_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if out == data or data in out.parents:
        rel = out.relative_to(data)
        where = (
            "is the data folder itself"
            if out == data
            else f"would be read as class folder {rel.parts[0]!r}"
            if len(rel.parts) == 1
            else f"would add its images to class folder {rel.parts[0]!r}"
        )
        raise ConfigError(
            f"--out {out_dir}: the run folder lies inside DATA_DIR {data_dir} and {where}; "
            "choose a run folder outside the data folder"
        )


def check_out_is_a_folder(out_dir: str | Path) -> None:
    """Refuse --out at an existing file, or below one, before anything is written."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a folder; choose a run folder path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"--out {out_dir}: {parent} is a file, so no folder can be made below it; "
                    "choose a run folder path"
                )
            break


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every differing (dotted) key; a missing side shows as 'unset'."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:

            def show(v: Any) -> str:
                return "unset" if v is missing else json.dumps(v)

            lines.append(f"{key}: {show(va)} -> {show(vb)}")
    return lines


def check_run_folder(out_dir: str | Path, record: dict[str, Any], class_names: list[str]) -> None:
    """Refuse, before writing anything, a run folder started with another configuration or on
    other classes; naming each differing option or class."""
    out = Path(out_dir)
    stored = out / "config.json"
    if stored.is_file():
        diff = config_differences(read_json(stored), record)
        if diff:
            shown = "\n  ".join(diff)
            raise ConfigError(
                f"{stored}: this run folder was started with another configuration:\n  {shown}\n"
                "use a new --out folder, or the same options to resume"
            )
    classes = out / "classes.json"
    if classes.is_file():
        old = list(read_json(classes))
        if old != list(class_names):
            gone = [c for c in old if c not in class_names]
            new = [c for c in class_names if c not in old]
            detail = "; ".join(
                part
                for part in (
                    f"no longer in DATA_DIR: {', '.join(gone)}" if gone else "",
                    f"new: {', '.join(new)}" if new else "",
                    "same names in another order" if not gone and not new else "",
                )
                if part
            )
            raise ConfigError(
                f"{classes}: this run was fitted on classes {old}, the data folder now has "
                f"{list(class_names)} ({detail}); use a new --out folder, or restore the class "
                "folders to resume"
            )


def warn_few_images(class_names: list[str], shots: list[int]) -> list[str]:
    """Warn about classes with a single image; returns their names."""
    single = [name for name, k in zip(class_names, shots) if k == 1]
    if single:
        log.warning(
            "class(es) %s have a single image (K=1): the teacher's prototype is that one image, "
            "textual inversion learns the class from it alone and every TINT/DA-Fusion image "
            "starts from it, so the student sees one view of the class and nothing is left to "
            "check it on; add more images per class if you can (5 or more work well)",
            ", ".join(repr(n) for n in single),
        )
    return single
