#!/usr/bin/env bash
# One-time, idempotent setup for a fresh machine: venv in the repo, CPU torch pinned, offline assets.
# A second run checks a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.tinyshot-setup"
want="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/tinyshot" ]; then
  exit 0
fi
echo "[setup] installing system packages (Noto fonts, Fashion-MNIST)" >&2
need_apt=()
[ -d /usr/share/fonts/truetype/noto ] || need_apt+=(fonts-noto-core)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
fi
echo "[setup] python environment in $VENV" >&2
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0 >&2
$PIP install -c constraints.txt -e ".[offline,distributed,dev]" >&2
# open_clip_torch only for its CLIP BPE vocabulary file: never imported (it needs torchvision).
$PIP install -c constraints.txt --no-deps open_clip_torch >&2
echo "$want" > "$STAMP"
echo "[setup] done" >&2
