"""The contract every registered quantizer must pass, whatever its method.

`tests/quant/test_contract.py` runs each check over every entry of QUANTIZERS (and
ACTIVATION_QUANTIZERS), so a new method (gq, s8bqat, admm, ...) is held to it the moment it is
registered. The checks use only the public quantizer interface: `from_config`, `forward`,
`quantize_int`, `bits`, `levels`, `set_bits`, `state_dict`/`load_state_dict`, `parameters`, and for
activation quantizers `observe`, `freeze`, `calibrating`.

A method may refuse a config it cannot honour by raising an MpsearchError from `from_config` (lsq
refuses asymmetric weights); that case is skipped, but every method must accept the default
(symmetric, per-channel) config.

Checks on the quantized values (levels, export, idempotence, error, set_bits) run on the deployed
forward, eval mode, and also in training mode unless the quantizer says its training forward is not on
the grid (`quantized_in_training` False: ADMM trains float weights; GQ while its temperature is above 0).
For uniform and lsq both modes are checked, as before; gradients are checked in training mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mpsearch.errors import MpsearchError
from mpsearch.quant.config import GRANULARITIES, MAX_BITS, MIN_BITS, QuantConfig
from mpsearch.quant.quantizers import ACTIVATION_QUANTIZERS, QUANTIZERS

BITS = tuple(range(MIN_BITS, MAX_BITS + 1))
SYMMETRIC = (True, False)
# A Linear, a Conv1d and an LSTM matrix (4 * hidden rows).
WEIGHT_SHAPES = ((12, 20), (6, 4, 3), (32, 8))


def _skip(reason: str) -> None:
    import pytest  # test-time dependency only

    pytest.skip(reason)


def weight(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """A fixed random weight with channels of different magnitudes and a few outliers."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.05
    channel_gain = torch.logspace(-1, 1, shape[0]).reshape(shape[0], *([1] * (len(shape) - 1)))
    w = w * channel_gain
    flat = w.view(-1)
    flat[:: max(flat.numel() // 5, 1)] *= 4.0
    return w


def config(method: str, bits: int, granularity: str = "per_channel", symmetric: bool = True) -> QuantConfig:
    return QuantConfig(weight_bits=bits, act_bits=None, method=method, granularity=granularity,
                       symmetric=symmetric)


def build(method: str, bits: int, granularity: str, symmetric: bool, w: Tensor):
    """The method's quantizer for w; skips the test if the method refuses the config."""
    try:
        return QUANTIZERS.get(method).from_config(config(method, bits, granularity, symmetric), w)
    except MpsearchError as exc:
        if granularity == "per_channel" and symmetric:
            raise AssertionError(f"'{method}' must accept the default symmetric per-channel config: {exc}")
        _skip(f"'{method}' does not support granularity={granularity}, symmetric={symmetric}: {exc}")


def _channels(x: Tensor, per_channel: bool) -> list[Tensor]:
    return list(x.reshape(x.shape[0], -1)) if per_channel else [x.reshape(-1)]


def _modes(q) -> tuple[bool, ...]:
    """The training flags whose forward must be on the grid: eval always, training if the method says so."""
    return (False, True) if getattr(q, "quantized_in_training", True) else (False,)


def _forward(q, x: Tensor, training: bool) -> Tensor:
    q.train(training)
    with torch.no_grad():
        return q(x)


def check_levels(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """At most 2^bits distinct values per quantization group, and bits/levels report the width."""
    per_channel = granularity == "per_channel"
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        q = build(method, bits, granularity, symmetric, w)
        assert q.bits == bits, f"bits is {q.bits}, configured {bits}"
        assert 2 <= q.levels <= 2 ** bits, f"levels is {q.levels} for {bits} bits"
        for training in _modes(q):
            out = _forward(q, w, training)
            assert out.shape == w.shape and out.dtype == w.dtype
            for group in _channels(out, per_channel):
                distinct = group.unique().numel()
                assert distinct <= 2 ** bits, \
                    f"{distinct} distinct values at {bits} bits ({shape}, {granularity}, training={training})"


def check_export(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """quantize_int gives 8-bit integer codes, at most 2^bits of them per group, that dequantize to
    forward(w). (A codebook method may place its 2^bits codes anywhere on the 8-bit grid.)"""
    per_channel = granularity == "per_channel"
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        q = build(method, bits, granularity, symmetric, w)
        codes, scale, zero_point = q.quantize_int(w)
        assert not codes.is_floating_point() and codes.shape == w.shape
        assert codes.dtype in (torch.int8, torch.uint8), f"codes are {codes.dtype}, not 8-bit"
        for group in _channels(codes, per_channel):
            assert group.unique().numel() <= 2 ** bits
        dequantized = (codes.to(w.dtype) - zero_point.to(w.dtype)) * scale
        tol = 1e-6 * float(w.abs().max())
        for training in _modes(q):
            out = _forward(q, w, training)
            assert torch.allclose(dequantized, out, rtol=1e-6, atol=tol), \
                f"export does not reproduce forward(w) (training={training})"


def check_idempotent(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """Q(Q(w)) == Q(w) with the quantizer's state unchanged (no optimiser step in between)."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        q = build(method, bits, granularity, symmetric, w)
        for training in _modes(q):
            once = _forward(q, w, training)
            twice = _forward(q, once, training)
            tol = 1e-6 * float(w.abs().max())
            assert torch.allclose(twice, once, rtol=1e-6, atol=tol), \
                f"not idempotent: max diff {float((twice - once).abs().max()):.3g} ({shape}, {bits} bits)"


def check_error_shrinks_with_bits(method: str, granularity: str, symmetric: bool) -> None:
    """||Q_b(w) - w|| does not grow as b goes from MIN_BITS to MAX_BITS (fresh quantizer per width)."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape, seed=1)
        errors = []
        for bits in BITS:
            q = build(method, bits, granularity, symmetric, w)
            errors.append(float((_forward(q, w, False) - w).norm()))
        for lower, higher, bits in zip(errors, errors[1:], BITS[1:]):
            assert higher <= lower * (1 + 1e-6), f"error grew at {bits} bits: {errors} ({shape})"
        assert errors[-1] < errors[0], f"error did not shrink at all: {errors}"


def check_gradients(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """Gradients reach the weight and every trainable part (the step of lsq), and are finite."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape).requires_grad_(True)
        q = build(method, bits, granularity, symmetric, w)
        upstream = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        (q(w) * upstream).sum().backward()
        assert w.grad is not None and torch.isfinite(w.grad).all(), "no finite gradient on the weight"
        assert w.grad.abs().sum() > 0, "the gradient on the weight is all zero"
        for name, param in q.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, f"no gradient reaches the quantizer's '{name}'"
                assert torch.isfinite(param.grad).all(), f"non-finite gradient on '{name}'"
                assert param.grad.abs().sum() > 0, f"the gradient on '{name}' is all zero"


def check_scale_shape(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """Per-channel scales are (out_channels, 1, ...); any scale and zero point broadcast to the weight."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        q = build(method, bits, granularity, symmetric, w)
        _, scale, zero_point = q.quantize_int(w)
        if granularity == "per_channel":
            assert tuple(scale.shape) == (shape[0],) + (1,) * (len(shape) - 1), f"scale shape {tuple(scale.shape)}"
        else:
            assert scale.numel() == 1, f"per-tensor scale has {scale.numel()} elements"
        assert torch.broadcast_shapes(scale.shape, w.shape) == w.shape
        assert torch.broadcast_shapes(zero_point.shape, w.shape) == w.shape
        assert (scale > 0).all(), "scales must be positive"


def check_state_dict_roundtrip(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """A trained quantizer's state_dict loaded into a fresh one (built on another weight) gives identical outputs."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape).requires_grad_(True)
        trained = build(method, bits, granularity, symmetric, w)
        _train_towards(trained, w, weight(shape, seed=3))
        other = weight(shape, seed=4) * 3.0
        fresh = build(method, bits, granularity, symmetric, other)
        fresh.load_state_dict(trained.state_dict())
        for training in (True, False):
            assert torch.equal(_forward(fresh, w, training), _forward(trained, w, training)), \
                f"outputs differ after a state_dict round trip (training={training})"


def _train_towards(quantizer: nn.Module, w: torch.Tensor, target: torch.Tensor, steps: int = 3) -> None:
    """A few steps of the one training loop moving `w` and the quantizer's learned parts towards `target`."""
    from mpsearch.config import TrainConfig
    from mpsearch.training.tasks import FixedBatchTask
    from mpsearch.training.trainer import train

    model = nn.Module()
    model.w, model.quantizer = nn.Parameter(w.detach()), quantizer
    task = FixedBatchTask(model, target, loss=lambda m, target: ((m.quantizer(m.w) - target) ** 2).sum())
    train(task, TrainConfig(max_steps=steps, lr=0.05, weight_decay=0.0, warmup_steps=0), progress=False)
    with torch.no_grad():
        w.copy_(model.w)


def check_set_bits(method: str, bits: int, granularity: str, symmetric: bool) -> None:
    """set_bits(b) switches the width in place: bits, levels and the distinct values follow."""
    per_channel = granularity == "per_channel"
    w = weight(WEIGHT_SHAPES[0])
    q = build(method, MAX_BITS if bits != MAX_BITS else MIN_BITS, granularity, symmetric, w)
    q.set_bits(bits)
    assert q.bits == bits and q.levels <= 2 ** bits
    for training in _modes(q):
        out = _forward(q, w, training)
        assert torch.isfinite(out).all()
        for group in _channels(out, per_channel):
            assert group.unique().numel() <= 2 ** bits
    try:
        q.set_bits(MAX_BITS + 1)
    except MpsearchError:
        pass
    else:
        raise AssertionError(f"set_bits({MAX_BITS + 1}) must raise an MpsearchError")


# Checks run for every (method, bits, granularity, symmetric).
WEIGHT_CHECKS: tuple[Callable[[str, int, str, bool], None], ...] = (
    check_levels,
    check_export,
    check_idempotent,
    check_gradients,
    check_scale_shape,
    check_state_dict_roundtrip,
    check_set_bits,
)
# Checks run for every (method, granularity, symmetric): they sweep the bit widths themselves.
WEIGHT_SWEEP_CHECKS: tuple[Callable[[str, str, bool], None], ...] = (check_error_shrinks_with_bits,)


def supports(method: str, granularity: str, symmetric: bool) -> bool:
    """Whether the method accepts this granularity and symmetry (its public check_config says so)."""
    try:
        QUANTIZERS.get(method).check_config(config(method, MAX_BITS, granularity, symmetric))
    except MpsearchError:
        return False
    return True


def weight_cases(methods: list[str] | None = None) -> list[tuple[str, int, str, bool]]:
    """(method, bits, granularity, symmetric) for every registered method (or `methods`) and every
    granularity and symmetry it supports; the default (per-channel, symmetric) is always included."""
    methods = QUANTIZERS.names() if methods is None else methods
    return [(m, b, g, s) for m in methods for g in GRANULARITIES for s in SYMMETRIC
            if supports(m, g, s) or (g == "per_channel" and s) for b in BITS]


def sweep_cases(methods: list[str] | None = None) -> list[tuple[str, str, bool]]:
    methods = QUANTIZERS.names() if methods is None else methods
    return [(m, g, s) for m in methods for g in GRANULARITIES for s in SYMMETRIC
            if supports(m, g, s) or (g == "per_channel" and s)]


# Activation quantizers ----------------------------------------------------------------------------

def activations(signed: bool, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 10, 16, generator=gen)
    return x if signed else torch.relu(x)


def build_activation(name: str, bits: int):
    cfg = QuantConfig(weight_bits=8, act_bits=bits)
    return ACTIVATION_QUANTIZERS.get(name).from_config(cfg)


def check_activation_levels(name: str, bits: int, signed: bool) -> None:
    """After observing data: at most 2^bits values, and int codes that dequantize to forward(x)."""
    q = build_activation(name, bits)
    x = activations(signed)
    q.observe(x)
    assert q.initialized
    q.eval()
    with torch.no_grad():
        out = q(x)
    assert out.unique().numel() <= 2 ** bits
    if not signed:
        assert (out >= 0).all(), "a non-negative tensor must stay non-negative"
    codes, scale, zero_point = q.quantize_int(x)
    assert torch.allclose((codes.float() - zero_point.float()) * scale, out, rtol=1e-6, atol=1e-7)
    assert q.signed == signed


def check_activation_calibration(name: str, bits: int, signed: bool) -> None:
    """Calibrating passes data through unchanged; frozen quantizers no longer change their state."""
    q = build_activation(name, bits)
    x = activations(signed)
    q.train()
    q.calibrating = True
    assert torch.equal(q(x), x), "a calibrating quantizer must return its input unchanged"
    q.calibrating = False
    q.freeze()
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, Tensor)}
    q(x * 10.0)
    after = q.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"frozen quantizer changed '{key}'"


def check_activation_gradients_and_state(name: str, bits: int, signed: bool) -> None:
    """Gradients reach the input (and any learned part); state_dict round-trips to identical outputs."""
    q = build_activation(name, bits)
    q.train()
    x = activations(signed).requires_grad_(True)
    out = q(x)
    (out * activations(True, seed=5)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, param in q.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"no finite gradient on '{pname}'"
    fresh = build_activation(name, bits)
    fresh.load_state_dict(q.state_dict())
    q.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x)), "outputs differ after a state_dict round trip"


ACTIVATION_CHECKS: tuple[Callable[[str, int, bool], None], ...] = (
    check_activation_levels,
    check_activation_calibration,
    check_activation_gradients_and_state,
)


def activation_cases(names: list[str] | None = None) -> list[tuple[str, int, bool]]:
    names = ACTIVATION_QUANTIZERS.names() if names is None else names
    return [(n, b, s) for n in names for b in BITS for s in (True, False)]
