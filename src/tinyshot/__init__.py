"""tinyshot: a handful of labelled images per class in, a tiny fast classifier out (TINT distillation)."""

from tinyshot.errors import TinyshotError

__version__ = "0.1.0"
__all__ = ["TinyshotError", "__version__"]
