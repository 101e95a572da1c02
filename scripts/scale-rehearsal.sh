#!/usr/bin/env bash
# The paper preset's run at the paper's data volume, rehearsed on this machine's CPU:
# `tinyshot fit --preset paper` with 5 classes x 5 shots, 4,000 synthetic images per class
# generated at 512 px, the teacher at 224 px and ResNet12 at 84 px; only TI steps, DDIM steps,
# NTI inner iterations and distillation iterations are cut. The generator (SD 1.5's
# architecture at 512 px, reduced widths, no self-attention) and the teacher (DINO ViT-B/16 at
# reduced width, 224 px input) are random-weight folders loaded by the real code path.
# With KILL set, fit is killed (SIGKILL) once inside each named stage and resumed.
# Writes OUT/rehearsal.json (per-stage seconds, peak RSS, disk), OUT/fit/ (the run folder).
# Rerunning the same command resumes. docs/pipeline.md, "The paper preset, rehearsed".
#
# Usage: scripts/scale-rehearsal.sh [OUT]          (default runs/scale-rehearsal)
#   PER_CLASS=4000                       synthetic images per class (the paper's count)
#   KILL="specialize generate labels distill"   stages to kill once each ("" for none)
#   PYTHON=/path/to/python               default .venv/bin/python if present, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/scale-rehearsal}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
KILL="${KILL-specialize generate labels distill}"
# shellcheck disable=SC2086
"$PYTHON" -m tinyshot.pipeline.rehearsal "$OUT" --per-class "${PER_CLASS:-4000}" --kill $KILL
