"""ONNX export of a trained NNA model, checked by onnxruntime against the integer reference executor.

    export_int(model, "model.npz")           # mpsearch.quant.nna: the chip's integers
    export_onnx("model.npz")                 # RNN-T: model.encoder.onnx, model.predictor.onnx, model.joiner.onnx
                                             # Conformer with a CTC head: model.ctc.onnx
    OnnxTransducer("model.npz")              # onnxruntime sessions, greedy decoding in numpy
    OnnxCTC("model.npz")                     # one session, greedy CTC decoding in numpy

The graphs are built with `onnx.helper` from the integer export itself (MatMulInteger and ConvInteger
with int8 initialisers, the requantisation as int64 Mul/Add/Mod/Div/Clip with its constants computed
once at export, lookup tables as Gather, each LSTM layer a Scan over time, the Conformer's LayerNorm,
softmax and rotary kernels as int64 nodes), with dynamic batch and time axes. `onnx` and `onnxruntime` are the optional extra `pip install 'mpsearch[onnx]'`, imported only when
these functions run.
"""

from mpsearch.onnx.deps import OnnxError
from mpsearch.onnx.export import export_onnx, export_onnx_if_supported, onnx_paths
from mpsearch.onnx.runtime import OnnxCTC, OnnxTransducer

__all__ = ["OnnxCTC", "OnnxError", "OnnxTransducer", "export_onnx", "export_onnx_if_supported", "onnx_paths"]
