"""mcel: margin cross-entropy loss and bit-error tolerance for quantized networks."""

from mcel.errors import MCELError
from mcel.losses import MCELoss, MHLoss, create_loss, mcel_loss, mhl_loss

__version__ = "0.1.0"
__all__ = ["MCELError", "MCELoss", "MHLoss", "create_loss", "mcel_loss", "mhl_loss", "__version__"]
