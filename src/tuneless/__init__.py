"""tuneless: make trained PyTorch networks smaller without data and without fine-tuning."""

from tuneless.checkpoint import load_checkpoint
from tuneless.errors import TunelessError, UnsupportedModelError

__version__ = "0.1.0"
__all__ = ["TunelessError", "UnsupportedModelError", "load_checkpoint", "__version__"]
