"""Feed a trained RNN-T's exported encoder graph two batch/time shapes (one utterance; a padded batch of
three unequal lengths) in one onnxruntime session and compare its int8 codes with the integer executor's,
utterance by utterance.

    python analysis/onnx_two_shapes.py runs/quickstart/trained/knee
"""
import sys

import numpy as np
import onnxruntime as ort

from mpsearch.quant.nna.executor import RNNTExecutor

d = sys.argv[1].rstrip("/") + "/"
sess = ort.InferenceSession(d + "model.encoder.onnx", providers=["CPUExecutionProvider"])
print("inputs:", [(i.name, i.shape, i.type) for i in sess.get_inputs()])
print("outputs:", [(o.name, o.shape) for o in sess.get_outputs()])
ex = RNNTExecutor(d + "model.npz")
rng = np.random.default_rng(0)
all_equal = True
for batch, frames in ((1, 97), (3, 240)):
    lens = np.array([frames - 13 * i for i in range(batch)], dtype=np.int64)
    feats = rng.standard_normal((batch, frames, 80)).astype(np.float32)
    codes = np.stack([ex.quantize_features(f) for f in feats]).astype(np.int8)  # the host's side of the chip
    out = sess.run(None, {"feats": codes, "feat_lens": lens})
    enc = out[0]
    same = []
    for b in range(batch):
        ref = ex.encode(codes[b, :lens[b]])
        same.append(bool(np.array_equal(enc[b, :ref.shape[0]], ref)))
    all_equal &= all(same)
    print(f"batch {batch} x {frames} frames (lengths {lens.tolist()}) -> encoder codes {enc.shape} {enc.dtype}; "
          f"equal to the executor's, utterance by utterance: {same}")
sys.exit(0 if all_equal else 1)
