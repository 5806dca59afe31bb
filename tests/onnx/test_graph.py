"""The integer primitives and the transformer kernels as ONNX nodes against mpsearch.quant.nna.numerics,
in onnxruntime, at their edge cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mpsearch.onnx import kernels
from mpsearch.onnx.graph import OPSET, GraphBuilder
from mpsearch.quant.nna.numerics import (
    ROUNDINGS,
    NNANumerics,
    exp_table,
    layer_norm_codes,
    reciprocal_sqrt,
    requantize,
    requantize_sum,
    rounding_shift,
    softmax_codes,
    softmax_numerator,
)

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


def _run_any(g: GraphBuilder, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """The nodes of `g` in onnxruntime, inputs of any shape and type, int64 outputs of any shape."""
    helper, mapping = g.onnx.helper, g.onnx.helper.np_dtype_to_tensor_dtype
    inputs = [helper.make_tensor_value_info(n, mapping(a.dtype), None) for n, a in feeds.items()]
    results = [helper.make_tensor_value_info(n, g.onnx.TensorProto.INT64, None) for n in outputs]
    graph = helper.make_graph(g.nodes, "kernel", inputs, results, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outputs, feeds)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_a_shift_known_at_run_time_rounds_negative_and_positive_values_as_numerics(rounding):
    rng = np.random.default_rng(2)
    shift = rng.integers(0, 45, size=5000)
    x = np.where(rng.random(5000) < 0.3, (2 * rng.integers(-999, 999, size=5000) + 1) * ((1 << shift) >> 1),
                 rng.integers(-(1 << 50), 1 << 50, size=5000))  # exact ties, of both signs, for 30% of them
    g = GraphBuilder(NNANumerics(rounding=rounding))
    g.reserve("x", "s")
    out = g.rounding_shift("x", g.runtime_shift("s", "shift"), "out")
    (got,) = _run_any(g, {"x": x, "s": shift}, [out])
    np.testing.assert_array_equal(got, rounding_shift(x, shift, rounding))


def test_reciprocal_square_roots_are_exact_at_squares_and_their_neighbours():
    rng = np.random.default_rng(3)
    roots = np.concatenate([rng.integers(1, 1 << 31, size=3000), [1, 2, 3, (1 << 31) - 1, 1 << 30]])
    squares = roots * roots
    v = np.concatenate([squares, squares - 1, squares + 1, rng.integers(1, 1 << 62, size=3000),
                        rng.integers(1, 1 << 20, size=1000), [(1 << 62) - 1, 1 << 60, (1 << 60) - 1]])
    v = v[(v >= 1) & (v < (1 << 62))]
    g = GraphBuilder(NNANumerics())
    g.reserve("v")
    r, e = kernels.reciprocal_sqrt(g, "v", "rsqrt")
    got_r, got_e = _run_any(g, {"v": v}, [r, e])
    want_r, want_e = reciprocal_sqrt(v)
    np.testing.assert_array_equal(got_e, want_e)
    np.testing.assert_array_equal(got_r, want_r)


def _kernel_model(numerics: NNANumerics, **arrays: np.ndarray) -> SimpleNamespace:
    """What a kernel builder reads of an IntegerModel: its arrays (under module 'm') and numerics."""
    return SimpleNamespace(arrays={f"m.{k}": np.asarray(v, np.int64) for k, v in arrays.items()}, numerics=numerics)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_masked_softmax_nodes_compute_the_numerics_codes(rounding):
    rng = np.random.default_rng(4)
    numerics = NNANumerics(rounding=rounding)
    x = rng.integers(-128, 128, size=(3, 2, 9, 9))
    x[0, 0, 0] = 127  # a row of equal maxima
    valid = rng.random((3, 1, 9, 9)) < 0.6
    valid[1, 0, 2] = False  # a row with no valid key: all 0
    table, numerator = exp_table(0.05, numerics), softmax_numerator(1.0 / 127)
    g = GraphBuilder(numerics)
    g.reserve("x", "valid")
    out = kernels.softmax(g, _kernel_model(numerics, exp_lut=table, numerator=numerator), "m", "x", "valid")
    (got,) = _run_any(g, {"x": x.astype(np.int8), "valid": valid}, [g.int64(out, "out64")])
    np.testing.assert_array_equal(got, softmax_codes(x, valid.astype(np.int64), table, numerator, numerics))


@pytest.mark.parametrize("rounding, eps", [("half_up", 0), ("half_even", 1 << 20), ("half_away", 12345)])
def test_layer_norm_nodes_compute_the_numerics_codes_on_constant_and_extreme_rows(rounding, eps):
    rng = np.random.default_rng(5)
    numerics = NNANumerics(rounding=rounding)
    x = rng.integers(-128, 128, size=(2, 7, 24))
    x[0, 0], x[0, 1], x[0, 2] = 5, -128, 127  # constant rows: V = 0 without eps
    x[1, 0, ::2], x[1, 0, 1::2] = -128, 127
    x[1, 1] = 0
    x[1, 1, 3] = 1  # one channel off the mean
    gamma, beta = rng.integers(-(1 << 15), 1 << 15, size=24), rng.integers(-(1 << 20), 1 << 20, size=24)
    model = _kernel_model(numerics, gamma=gamma, beta=beta, eps=eps, multiplier=23456, shift=22)
    for axis in (-1, 1):
        g = GraphBuilder(numerics)
        g.reserve("x")
        data = x if axis == -1 else x.transpose(0, 2, 1)
        out = kernels.layer_norm(g, model, "m", "x", axis, 3)
        (got,) = _run_any(g, {"x": data.astype(np.int8)}, [g.int64(out, "out64")])
        tail = (1,) * (2 - axis % 3)
        want = layer_norm_codes(data, gamma.reshape(-1, *tail), beta.reshape(-1, *tail), eps, 23456, 22, numerics,
                                axis % 3)
        np.testing.assert_array_equal(got, want)
