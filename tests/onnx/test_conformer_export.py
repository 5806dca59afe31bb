"""A tiny Conformer CTC model quantized under NNA emulation, exported to one ONNX graph: onnxruntime computes
the reference executor's codes, module by module, for each utterance of padded batches of two shapes, and
greedy CTC decoding of its logits gives the executor's labels."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.onnx import OnnxError, export_onnx, export_onnx_if_supported
from mpsearch.onnx.reference import conformer_taps
from mpsearch.onnx.runtime import OnnxCTC, tap_names
from mpsearch.quant import Policy, QuantConfig
from mpsearch.quant.nna import NNANumerics, export_int
from mpsearch.quant.nna.executor import ConformerExecutor

MIXED = Policy({"_default": QuantConfig(weight_bits=8),
                r"re:encoder\.blocks\.\d+\.ff[12]\..*": QuantConfig(weight_bits=4),
                r"re:encoder\.blocks\.\d+\.attn\..*": QuantConfig(weight_bits=6, granularity="per_tensor")})


@pytest.mark.parametrize("policy, numerics, overrides", [
    (None, None, {}),
    (MIXED, NNANumerics(multiplier_bits=30, rounding="half_even"), {}),
    (MIXED, NNANumerics(multiplier_bits=11, rounding="half_away"), {"chunk_size": 3}),
], ids=["uniform8-half_up", "mixed-half_even", "mixed-half_away-chunked"])
def test_onnxruntime_gives_the_executors_codes_per_utterance_of_padded_batches(
        emulated_conformer, speech, pad, tmp_path, policy, numerics, overrides):
    model = emulated_conformer(policy, numerics, **overrides)
    export_int(model, tmp_path / "model.npz")
    assert export_onnx(tmp_path / "model.npz") == {"ctc": tmp_path / "model.ctc.onnx"}
    executor = ConformerExecutor(tmp_path / "model.npz")
    graphs = OnnxCTC(tmp_path / "model.npz", taps=tap_names(executor.modules))
    batch = next(speech.dev.batches(100_000))
    lens = batch.feat_lens.tolist()
    assert len(set(lens)) > 1, "the batch must pad its shorter utterances"
    codes = [executor.quantize_features(batch.feats[b, : lens[b]].numpy()) for b in range(len(lens))]

    # The whole batch (unequal lengths, garbage padding), then the shortest utterance alone.
    shortest = int(np.argmin(lens))
    for group in (list(range(len(codes))), [shortest]):
        logits, logit_lens, taps = graphs.logits(*pad([codes[b] for b in group]), taps=True)
        for row, b in enumerate(group):
            reference = conformer_taps(executor, codes[b])
            assert logit_lens[row] == len(reference["ctc_head"])
            for name, expected in reference.items():
                tapped = taps[name][row][tuple(slice(0, n) for n in expected.shape)]
                np.testing.assert_array_equal(tapped, expected, err_msg=name)
    assert {"encoder.blocks.1.attn.softmax", "encoder.blocks.1.conv.depthwise", "ctc_head"} <= set(reference)

    # Greedy CTC around the graph: the executor's labels, and the emulated model's; best paths hold both
    # blanks and labels, so collapsing and dropping were both exercised.
    logits, logit_lens, _ = graphs.logits(*pad(codes))
    decoded = [graphs.greedy(logits[b, : logit_lens[b]]) for b in range(len(codes))]
    assert decoded == [executor.greedy_decode(c) for c in codes] == model.greedy_decode(batch.feats, batch.feat_lens)
    best = np.concatenate([logits[b, : logit_lens[b]].argmax(-1) for b in range(len(codes))])
    assert 0 < (best == 0).sum() < len(best)


def test_the_graph_has_dynamic_batch_and_time_and_integer_operators_only(emulated_conformer, tmp_path):
    import onnx

    export_int(emulated_conformer(chunk_size=2), tmp_path / "model.npz")
    graph = onnx.load(str(export_onnx(tmp_path / "model.npz")["ctc"]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.graph.input, *graph.graph.output]}
    assert dims["feats"][:2] == ["batch", "frames"] and dims["feat_lens"] == ["batch"]
    assert dims["logits"][:2] == ["batch", "logit_frames"] and dims["logit_lens"] == ["batch"]
    assert {i.data_type for i in graph.graph.initializer} >= {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    ops = {node.op_type for node in graph.graph.node}
    assert {"ConvInteger", "MatMulInteger", "Gather", "ReduceMax"} <= ops
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "Softmax", "LayerNormalization", "Sigmoid"}
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["mpsearch.architecture"] == "conformer" and float(metadata["mpsearch.input_scale"]) > 0


def test_more_frames_than_the_rotary_tables_hold_is_a_one_line_error(emulated_conformer, tmp_path):
    import onnx

    from mpsearch.onnx.conformer import ctc_graph
    from mpsearch.quant.nna.executor import IntegerModel

    export_int(emulated_conformer(), tmp_path / "model.npz")
    onnx.save_model(ctc_graph(IntegerModel(tmp_path / "model.npz"), max_frames=5), str(tmp_path / "model.ctc.onnx"))
    graphs = OnnxCTC(tmp_path / "model.npz")
    codes = np.zeros((1, 20, 16), np.int8)
    assert graphs.logits(codes, [20])[0].shape[1] == 5
    with pytest.raises(OnnxError, match="21 feature frames make 6 encoder frames; the graph's rotary tables cover 5"):
        graphs.logits(np.zeros((1, 21, 16), np.int8), [21])


def test_a_transducer_head_has_no_graph_and_training_goes_on_without_one(emulated_conformer, tmp_path, caplog):
    export_int(emulated_conformer(head="transducer"), tmp_path / "model.npz")
    with pytest.raises(OnnxError, match="ONNX export covers the Conformer's CTC head; this one has a 'transducer'"):
        export_onnx(tmp_path / "model.npz")
    assert export_onnx_if_supported(tmp_path / "model.npz") is None
    assert "No ONNX export" in caplog.text and not list(tmp_path.glob("*.onnx"))


def test_an_architecture_without_graphs_names_those_with_graphs():
    from mpsearch.onnx.export import onnx_export

    assert onnx_export("conformer").parts == ("ctc",)
    with pytest.raises(OnnxError, match="No ONNX export for architecture 'lm'; graphs exist for conformer, rnnt"):
        onnx_export("lm")
