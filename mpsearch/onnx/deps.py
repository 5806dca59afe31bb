"""The optional ONNX packages, imported only when an ONNX export or check runs."""

from __future__ import annotations

from types import ModuleType

from mpsearch.errors import MpsearchError

INSTALL_HINT = "install the optional extra with `pip install 'mpsearch[onnx]'`"


class OnnxError(MpsearchError):
    """An ONNX export or an onnxruntime check cannot run (missing package, unsupported model, bad files)."""


def require_onnx() -> ModuleType:
    """The `onnx` package, or an OnnxError with the install hint."""
    try:
        import onnx
    except ImportError as exc:
        raise OnnxError(f"ONNX export needs the onnx package ({exc}); {INSTALL_HINT}.") from None
    return onnx


def require_onnxruntime() -> ModuleType:
    """The `onnxruntime` package, or an OnnxError with the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxError(f"The ONNX check needs onnxruntime ({exc}); {INSTALL_HINT}.") from None
    return onnxruntime

