"""A tiny RNN-T quantized under NNA emulation, exported to ONNX: onnxruntime computes the reference
executor's codes at any batch and time shape, and greedy decoding around the graphs gives its labels."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.onnx import OnnxTransducer, export_onnx
from mpsearch.quant import Policy, QuantConfig
from mpsearch.quant.nna import NNANumerics, export_int
from mpsearch.quant.nna.executor import RNNTExecutor

MIXED = Policy({"_default": QuantConfig(weight_bits=8), r"re:encoder\..*": QuantConfig(weight_bits=4),
                r"re:joiner\..*": QuantConfig(weight_bits=6, granularity="per_tensor")})


@pytest.mark.parametrize("policy, numerics, subsampling", [
    (None, None, "conv"),
    (MIXED, NNANumerics(multiplier_bits=30, rounding="half_even", lut_bits=6), "stack"),
    (MIXED, NNANumerics(multiplier_bits=11, rounding="half_away", accumulator_bits=20), "conv"),
], ids=["uniform8-half_up", "mixed-half_even-stack", "mixed-half_away-acc20"])
def test_onnxruntime_gives_the_executors_codes_at_two_shapes(emulated_rnnt, speech, pad, tmp_path, policy, numerics,
                                                             subsampling):
    model = emulated_rnnt(policy, numerics, subsampling)
    export_int(model, tmp_path / "model.npz")
    paths = export_onnx(tmp_path / "model.npz")
    assert sorted(p.name for p in paths.values()) == ["model.encoder.onnx", "model.joiner.onnx",
                                                       "model.predictor.onnx"]
    executor, graphs = RNNTExecutor(tmp_path / "model.npz"), OnnxTransducer(tmp_path / "model.npz")
    batch = next(speech.dev.batches(100_000))
    feats = [batch.feats[b, : batch.feat_lens[b]].numpy() for b in range(len(batch))]
    codes = [executor.quantize_features(f) for f in feats]

    # Encoder: the whole batch, longest last, then one short utterance alone.
    for group in (list(range(len(codes))), [0]):
        enc, enc_lens, _ = graphs.encode(*pad([codes[b] for b in group]))
        for row, b in enumerate(group):
            expected = executor.encode(codes[b])
            assert enc_lens[row] == len(expected)
            np.testing.assert_array_equal(enc[row, : len(expected)], expected)

    # Prediction network: label sequences of two lengths in batches of two sizes, state carried over.
    rng = np.random.default_rng(0)
    vocab = executor.config["vocab_size"]
    for batch_size, labels in ((1, 3), (3, 7)):
        tokens = rng.integers(0, vocab, size=(batch_size, labels))
        first, state, _ = graphs.predict(tokens[:, :2])
        rest, state, _ = graphs.predict(tokens[:, 2:], state)
        pred = np.concatenate([first, rest], axis=1)
        for row in range(batch_size):
            executor_state = None
            for u, token in enumerate(tokens[row]):
                out, executor_state = executor.predictor_step(int(token), executor_state)
                np.testing.assert_array_equal(pred[row, u], out)
            for layer, (h, c) in enumerate(executor_state):
                np.testing.assert_array_equal(state[0][layer, row], h)
                np.testing.assert_array_equal(state[1][layer, row], c)

    # Joiner: rows of two counts.
    joint = executor.config["joint_dim"]
    for rows in (1, 50):
        enc_rows = rng.integers(-128, 128, size=(rows, joint))
        pred_rows = rng.integers(-128, 128, size=(rows, joint))
        logits, _ = graphs.join(enc_rows, pred_rows)
        np.testing.assert_array_equal(logits, executor.joiner(enc_rows, pred_rows))

    # Greedy decoding around the graphs: the executor's labels, and the emulated model's.
    emulated = model.greedy_decode(batch.feats, batch.feat_lens)
    enc, enc_lens, _ = graphs.encode(*pad(codes))
    decoded = [graphs.greedy(enc[b, : enc_lens[b]]) for b in range(len(codes))]
    assert decoded == [executor.greedy_decode(c) for c in codes] == emulated
    assert 0 < sum(map(len, decoded)) < 5 * int(enc_lens.sum())  # labels emitted, blanks ended frames


def test_graph_inputs_and_outputs_have_dynamic_batch_and_time(emulated_rnnt, tmp_path):
    import onnx

    export_int(emulated_rnnt(), tmp_path / "model.npz")
    paths = export_onnx(tmp_path / "model.npz")
    encoder = onnx.load(str(paths["encoder"]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*encoder.graph.input, *encoder.graph.output]}
    assert dims["feats"][:2] == ["batch", "frames"] and dims["enc"][:2] == ["batch", "enc_frames"]
    assert {i.data_type for i in encoder.graph.initializer} >= {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    ops = {node.op_type for node in encoder.graph.node}
    assert {"ConvInteger", "MatMulInteger", "Scan"} <= ops and not ops & {"QuantizeLinear", "DequantizeLinear"}


def test_an_architecture_without_graphs_is_a_one_line_error():
    from types import SimpleNamespace

    from mpsearch.onnx import OnnxError
    from mpsearch.onnx.transducer import transducer_graphs

    with pytest.raises(OnnxError, match="ONNX export covers the RNN-T; this integer export holds 'conformer'"):
        transducer_graphs(SimpleNamespace(header={"architecture": "conformer"}))


def test_importing_the_package_leaves_onnx_and_onnxruntime_unloaded():
    import subprocess
    import sys

    code = "import sys, mpsearch.onnx; print(','.join(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""
