"""The error NNA emulation, export and the reference executor raise."""

from mpsearch.errors import MpsearchError


class NNAError(MpsearchError):
    """A model, calibration or integer export cannot be run with the accelerator's integer arithmetic."""
