#!/usr/bin/env bash
# The full-size path on one GPU in one command (about 5 minutes on an H100/H200, at most 8):
#   1. `tinyshot bench generate --arch sd15`: SD 1.5's UNet/VAE/CLIP text encoder from the
#      published configs (random weights, no download) at 512 px, fp16 and bf16 (if supported):
#      seconds per TI step, per LoRA training step (rank 16, 8 images, fp32 adapters on the
#      fp16/bf16 UNet), per NTI'd image (50 x 10), per generated image batched and one at a
#      time in fp32, all-in seconds per image beside the paper's 1.01 s (A40), peak GPU memory.
#   2. the ViT teachers' forward time at 224 px, batch 64, fp32 and fp16 autocast, random
#      weights from the published configs: DINO ViT-B/16 (the paper's), DINOv2 ViT-S/14 and
#      ViT-B/14 (dinov2-small, dinov2-base).
#   3. a miniature `tinyshot fit` (2 classes x 3 shots of 84 px images) with full-size random SD
#      1.5 and DINO ViT-B/16 folders: Real-ESRGAN to 512 px, fp16 TI + NTI, generation, DINO
#      teacher at 224 px, ResNet12 distillation, ONNX export.
# Writes OUT/gpu-check.json (all timings), OUT/log.txt, OUT/models/, OUT/fit/.
#
# Usage: scripts/gpu-check.sh [OUT]        (default runs/gpu-check; needs a CUDA torch)
#   PYTHON=/path/to/python  the interpreter with tinyshot installed (default: .venv/bin/python
#                           if present, else python3)
#   GPU_CHECK_TIMEOUT=480   seconds before the check is stopped
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu-check}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" - <<'PY'
import sys
try:
    import torch
    import tinyshot  # noqa: F401
except ImportError as e:
    sys.exit(f"gpu-check: {sys.executable} cannot import {e.name}; install tinyshot with a CUDA "
             "torch (pip install -e '.[offline]') or point PYTHON= at that interpreter")
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} sees no CUDA GPU; install a CUDA build of "
             "torch in this environment (pip install -e '.[offline]' with your own torch)")
print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
      f"{torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
PY
mkdir -p "$OUT"
# A fresh OUT each time: the fit resumes from a run folder, and timings must be of a full run.
rm -rf "$OUT/fit" "$OUT/models" "$OUT/data"
timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT:-480}" \
  "$PYTHON" -m tinyshot.pipeline.gpu_check "$OUT" --device cuda
echo "gpu-check: timings in $OUT/gpu-check.json"
