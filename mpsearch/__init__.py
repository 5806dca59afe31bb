"""mpsearch: mixed-precision search for on-device speech models.

Importing the package stays light: ray, optuna, pyhessian and plotting libraries load only when used.
"""

from mpsearch.errors import MpsearchError

__version__ = "0.1.0"
__all__ = ["MpsearchError", "__version__"]
