"""NNA emulation: the 8-bit accelerator's integer arithmetic in training, integer export, and a numpy
reference executor that proves the emulation bit-exact.

    model = quant.apply(float_model, policy, emulation="nna", numerics=NNANumerics.from_profile(profile))
    calibrate_nna(model, batches)          # ranges on real data, producer links, frozen scales
    ...QAT: the forward is the chip's integers, the gradients straight-through...
    model.greedy_decode(feats, lens)       # a transducer decodes by IntegerGreedySteps (decoding.py):
                                           # tables prepared once per batch, the same integers
    export_int(model, "model.npz")         # int8 codes, int32 biases, (M, shift), LUTs + JSON header
    RNNTExecutor("model.npz")              # numpy int64 only; must match the emulation bit for bit
                                           # (ConformerExecutor for a Conformer, CTC or transducer head)

GRUs, bidirectional LSTMs, GroupNorm, position tables and Hugging Face Wav2Vec2 / Wav2Vec2-Conformer
encoders run in the emulation (training, calibration, evaluation) only: export_int names the first
such module and writes nothing.
"""

from mpsearch.quant.nna.base import checking_grid
from mpsearch.quant.nna.calibrate import calibrate_nna, nna_modules
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.export import export_int
from mpsearch.quant.nna.numerics import NNANumerics

__all__ = ["NNAError", "NNANumerics", "calibrate_nna", "checking_grid", "export_int", "nna_modules"]
