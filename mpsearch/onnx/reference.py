"""The reference executor's codes module by module, for one utterance, laid out as the ONNX graphs lay
out theirs (batch dimension dropped): Conv1d outputs channels first (C, L), attention's per head
(H, T, ...), everything else (rows, C).

Only the executor's own methods compute here (`conv1d`, `linear`, `lstm_step`, `embedding`, `add`,
`lookup`, and the Conformer's kernels); this module only records their outputs in between, where
`RNNTExecutor.encode`, `predictor_step` and `ConformerExecutor.ctc_logits` pass them on without keeping
them.
"""

from __future__ import annotations

import numpy as np

from mpsearch.quant.nna.executor import SUBSAMPLING, ConformerExecutor, RNNTExecutor

# The executor methods that take a module's name first and return its codes.
MODULE_METHODS = ("conv1d", "linear", "layer_norm", "lookup", "add", "matmul", "softmax", "rotary", "glu")


def _lstm(executor: RNNTExecutor, name: str, x: np.ndarray, taps: dict[str, np.ndarray]) -> np.ndarray:
    """Every layer of LSTM `name` over x (T, K) from zero state, recording `<name>.l<k>`."""
    info = executor.modules[name]
    for layer in range(info["layers"]):
        h = c = np.zeros(info["hidden_size"], np.int64)
        outputs = []
        for x_t in x:
            h, c = executor.lstm_step(name, layer, x_t, h, c)
            outputs.append(h)
        x = taps[f"{name}.l{layer}"] = np.stack(outputs)
    taps[name] = x
    return x


def encoder_taps(executor: RNNTExecutor, feat_codes: np.ndarray) -> dict[str, np.ndarray]:
    """int8 feature codes (T, n_mels) -> every encoder module's codes; "encoder.proj" is `encode`'s output."""
    taps: dict[str, np.ndarray] = {}
    if executor.subsampling == "conv":
        x = feat_codes.T
        for conv in ("frontend.conv1", "frontend.conv2"):
            kernel = executor.arrays[f"{conv}.weight"].shape[2]
            taps[conv] = executor.conv1d(conv, np.pad(x, ((0, 0), (kernel - 1, 0))))
            x = np.maximum(taps[conv], 0)
        x = x.T
    else:
        frames, n_mels = feat_codes.shape
        stacked = np.pad(feat_codes, ((0, (-frames) % SUBSAMPLING), (0, 0))).reshape(-1, SUBSAMPLING * n_mels)
        taps["frontend.linear"] = executor.linear("frontend.linear", stacked)
        x = np.maximum(taps["frontend.linear"], 0)
    taps["encoder.proj"] = executor.linear("encoder.proj", _lstm(executor, "encoder.lstm", x, taps))
    return taps


def predictor_taps(executor: RNNTExecutor, tokens: list[int]) -> dict[str, np.ndarray]:
    """Labels (U,) fed one by one from zero state -> every predictor module's codes (U, ...), as
    `predictor_step` computes them."""
    taps = {"predictor.embed": executor.embedding("predictor.embed", np.asarray(tokens, np.int64))}
    x = _lstm(executor, "predictor.lstm", taps["predictor.embed"], taps)
    taps["predictor.proj"] = executor.linear("predictor.proj", x)
    return taps


def joiner_taps(executor: RNNTExecutor, enc: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Rows (N, J) of encoder and predictor codes -> every joiner module's codes, as `joiner` computes them."""
    taps = {"joiner.add": executor.add("joiner.add", enc, pred)}
    taps["joiner.activation"] = executor.lookup("joiner.activation", taps["joiner.add"])
    taps["joiner.out"] = executor.linear("joiner.out", taps["joiner.activation"])
    return taps


def conformer_taps(executor: ConformerExecutor, feat_codes: np.ndarray) -> dict[str, np.ndarray]:
    """int8 feature codes (T, n_mels) -> every module's codes as `ctc_logits` computes them; "ctc_head" is
    its output. Each module method of the executor is wrapped, for this call only, to record what it
    returns under the module's name (a GLU's own table lookup is recorded first, then its output)."""
    taps: dict[str, np.ndarray] = {}

    def recording(method):
        def record(name: str, *args, **kwargs) -> np.ndarray:
            taps[name] = method(name, *args, **kwargs)
            return taps[name]
        return record

    for method in MODULE_METHODS:
        setattr(executor, method, recording(getattr(executor, method)))
    try:
        executor.ctc_logits(feat_codes)
    finally:
        for method in MODULE_METHODS:
            delattr(executor, method)
    return taps
