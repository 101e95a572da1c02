"""FID-64: the paper's data-quality metric (Frechet distance on 64-d early Inception-V3 features).

This is pytorch-fid's `dims=64` feature layer: the FID Inception-V3 (TF 2015-12-05 weights)
up to the first max-pool (Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, MaxPool 3/2), then a
global average pool. Only these three conv layers are needed, so they are written here and
their weights are read from a local file the user provides (pytorch-fid's
`pt_inception-2015-12-05-*.pth`, or any state dict holding those layers); nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ModelError
from tinyshot.evaluation.frechet import FrechetResult, ImageSet, frechet_between

METRIC = "FID-64"
LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")
# pytorch-fid's InceptionV3 wrapper stores block 0 as blocks.0.{0,1,2}.
_WRAPPER_NAMES = {f"blocks.0.{i}": name for i, name in enumerate(LAYERS)}


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001, as in Inception-V3) + ReLU."""

    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionFID64(nn.Module):
    """[0,1] images (B,3,H,W) -> (B,64) pooled features of the first Inception-V3 block."""

    metric_name = METRIC
    feature_dim = 64

    def __init__(self, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # the TF Inception expects [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any key style (plain, 'module.'/'inception.' prefixes, pytorch-fid wrapper) to ours."""
    out: dict[str, torch.Tensor] = {}
    pat = re.compile(r"(?:^|\.)((?:" + "|".join(LAYERS) + r")\.(?:conv|bn)\.\w+)$")
    wrap = re.compile(r"(?:^|\.)(blocks\.0\.[012])\.((?:conv|bn)\.\w+)$")
    for k, v in sd.items():
        m = pat.search(k)
        if m:
            out[m.group(1)] = v
            continue
        m = wrap.search(k)
        if m:
            out[f"{_WRAPPER_NAMES[m.group(1)]}.{m.group(2)}"] = v
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(
            f"{path}: Inception weights not found. FID-64 needs pytorch-fid's "
            "pt_inception-2015-12-05 weights as a local file (--inception-weights); "
            "without them use the FD-EffNetLite0 distance instead"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot read Inception weights ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def load_inception_fid64(
    weights_path: str | Path, device: str | torch.device = "cpu"
) -> InceptionFID64:
    """Build the FID-64 feature extractor and load its three conv layers from a local file."""
    path = Path(weights_path)
    sd = _normalise_keys(_read_state_dict(path))
    model = InceptionFID64()
    own = model.state_dict()
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ModelError(
            f"{path}: not Inception-V3 FID weights; missing {len(missing)} of {len(needed)} "
            f"tensors (e.g. {', '.join(missing[:3])})"
        )
    for k in needed:
        if tuple(sd[k].shape) != tuple(own[k].shape):
            raise ModelError(
                f"{path}: tensor {k} has shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}"
            )
    model.load_state_dict({k: sd[k] for k in needed}, strict=False)
    return model.to(device).eval()


def fid64(
    images_a: ImageSet,
    images_b: ImageSet,
    weights_path: str | Path,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> FrechetResult:
    """The paper's FID on 64-d pooled features (images (N,3,H,W) in [0,1], uint8, or PIL lists)."""
    model = load_inception_fid64(weights_path)
    return frechet_between(images_a, images_b, model, batch_size, device)
