"""The real CLIP BPE tokenizer (the one SD 1.5 uses), built offline from the vocabulary file
that the `open_clip_torch` wheel ships. The package is never imported (it needs torchvision);
we only locate its data file and rebuild `vocab.json` + `merges.txt` the way CLIP does.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from tinyshot.errors import ModelError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def find_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the CLIP BPE vocabulary needs the open_clip_torch wheel: "
            "pip install --no-deps open_clip_torch (it is never imported)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILENAME
    if not path.is_file():
        raise ModelError(f"{path}: CLIP BPE vocabulary file missing from open_clip_torch")
    return path


def write_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write vocab.json and merges.txt (49,408 tokens) to out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(bpe_path or find_bpe_file()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    (out / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    )
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    return out


def load_clip_tokenizer(folder: str | Path | None = None, model_max_length: int = 77):
    """A CLIPTokenizer from a folder, or built from the open_clip vocabulary when folder is None."""
    from transformers import CLIPTokenizer

    if folder is None:
        import tempfile

        folder = write_clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="tinyshot-clip-bpe-")))
    folder = Path(folder)
    if (folder / "tokenizer_config.json").exists():
        return CLIPTokenizer.from_pretrained(folder)
    # transformers 5: the (fast) CLIPTokenizer takes the vocab dict and merge list directly.
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [ln for ln in (folder / "merges.txt").read_text().split("\n")[1:] if ln]
    merges = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
