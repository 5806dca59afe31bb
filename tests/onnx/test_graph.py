"""The integer primitives as ONNX nodes against mpsearch.quant.nna.numerics, in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.onnx.graph import OPSET, GraphBuilder
from mpsearch.quant.nna.numerics import ROUNDINGS, NNANumerics, requantize, requantize_sum

ort = pytest.importorskip("onnxruntime")
WIDE = (-(1 << 40), 1 << 40)  # saturation bounds that leave the rounding visible


def _run(g: GraphBuilder, inputs: list[str], output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    graph = helper.make_graph(g.nodes, "primitive", [helper.make_tensor_value_info(n, tp.INT64, ["n"]) for n in inputs],
                              [helper.make_tensor_value_info(output, tp.INT64, ["n"])], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    g.onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _accumulators(rng: np.random.Generator, shift: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """Random int32 accumulators; where M = 1, exact ties (k + 1/2) * 2^shift instead."""
    acc = rng.integers(-(1 << 31), 1 << 31, size=shift.shape, dtype=np.int64)
    ties = (2 * rng.integers(-1000, 1000, size=shift.shape) + 1) * ((1 << shift) >> 1)
    return np.where(multiplier == 1, ties, acc)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_nodes_compute_the_numerics_integers(rounding):
    rng = np.random.default_rng(0)
    numerics = NNANumerics(rounding=rounding, multiplier_bits=30)
    shift = rng.integers(0, 40, size=4000)
    multiplier = np.where(rng.random(4000) < 0.3, 1, rng.integers(1, 1 << 30, size=4000))
    acc = _accumulators(rng, shift, multiplier)
    g = GraphBuilder(numerics)
    g.reserve("acc")
    out = g.requantize("acc", multiplier, shift, WIDE, "out")
    expected = requantize(acc, multiplier, shift, rounding, WIDE)
    np.testing.assert_array_equal(_run(g, ["acc"], out, {"acc": acc}), expected)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_sum_nodes_round_once(rounding):
    rng = np.random.default_rng(1)
    numerics = NNANumerics(rounding=rounding)
    shift = rng.integers(0, 30, size=3000)
    ma = np.where(rng.random(3000) < 0.3, 1, rng.integers(0, 1 << 15, size=3000))
    a, b = _accumulators(rng, shift, ma), rng.integers(-(1 << 31), 1 << 31, size=3000)
    mb = np.where(ma == 1, 0, rng.integers(0, 1 << 15, size=3000))  # ties stay ties: the second term adds 0
    g = GraphBuilder(numerics)
    g.reserve("a", "b")
    out = g.requantize_sum(["a", "b"], [ma, mb], shift, WIDE, "out")
    expected = requantize_sum([a, b], [ma, mb], shift, rounding, WIDE)
    np.testing.assert_array_equal(_run(g, ["a", "b"], out, {"a": a, "b": b}), expected)
