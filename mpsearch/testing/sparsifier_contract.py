"""The contract every registered sparsifier passes (tests/quant/test_sparsifier_contract.py runs it over
`SPARSIFIERS`): the mask keeps the asked fraction, at once and at the end of its schedule; N:M blocks
hold exactly N weights; the schedule never asks for more than the target; masked weights are exact zeros
in a quantized module's forward; the state survives a state_dict round trip; the same weight gives the
same mask.

A check takes one case, a `SparsityConfig`, and raises AssertionError with what went wrong. A new
sparsifier registered in `SPARSIFIERS` is covered by `sparsity_cases()` without changes here: it is
unstructured (a `fraction` of zeros) unless it is N:M.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor, nn

from mpsearch.quant.config import SPARSIFIERS, QuantConfig, SparsityConfig

# Weights of a Linear and of a Conv1d; dim 1 (the input dimension N:M blocks run along) divides by 4.
WEIGHT_SHAPES = ((6, 8), (6, 4, 3))
FRACTIONS = (0.25, 0.75)
N_OF_M = ((2, 4), (1, 4))
TOTAL_STEPS = 12


def sparsity_cases() -> list[SparsityConfig]:
    """Every registered sparsifier with two targets: fractions of zeros, or N:M patterns for `nm`."""
    import mpsearch.quant.sparsity  # noqa: F401  (registers the sparsifiers)

    cases = []
    for name in SPARSIFIERS.names():
        if name == "nm":
            cases += [SparsityConfig(name, n=n, m=m) for n, m in N_OF_M]
        else:
            cases += [SparsityConfig(name, fraction=fraction) for fraction in FRACTIONS]
    return cases


def weight(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """A reproducible weight whose magnitudes tie in places, so ties must be broken the same way every time."""
    gen = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn(shape, generator=gen) * 4) / 4


def build(sparsity: SparsityConfig, w: Tensor, **options) -> nn.Module:
    """The sparsifier a QuantConfig with `sparsity` (and sparsity `options`) makes for weight `w`."""
    from mpsearch.quant.sparsity import make_sparsifier

    return make_sparsifier(QuantConfig(weight_bits=8, act_bits=None, sparsity=sparsity, options=options), w)


def _kept(sparsity: SparsityConfig, w: Tensor) -> int:
    return round(sparsity.density * w.numel())


def _run_schedule(sparsifier: nn.Module, w: Tensor) -> None:
    """Drive the schedule over TOTAL_STEPS steps and finish, as the training hooks do (the weight held still)."""
    for step in range(1, TOTAL_STEPS + 1):
        sparsifier.on_step(w, step, TOTAL_STEPS)
    sparsifier.on_finish(w)


def check_keeps_the_asked_fraction(sparsity: SparsityConfig) -> None:
    """update(w) and a whole schedule both leave exactly round(density * numel) weights kept."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        at_once = build(sparsity, w)
        at_once.update(w)
        assert int(at_once.mask.sum()) == _kept(sparsity, w), \
            f"update kept {int(at_once.mask.sum())} of {w.numel()} weights; expected {_kept(sparsity, w)}"
        scheduled = build(sparsity, w, sparsity_every=3)
        _run_schedule(scheduled, w)
        assert int(scheduled.mask.sum()) == _kept(sparsity, w), \
            f"the schedule ended with {int(scheduled.mask.sum())} of {w.numel()} weights kept"
        assert abs(scheduled.sparsity - (1.0 - sparsity.density)) <= 0.5 / w.numel()


def check_n_of_every_m(sparsity: SparsityConfig) -> None:
    """N:M: every block of M consecutive weights along dim 1 keeps exactly N (unstructured cases: no blocks)."""
    if sparsity.n is None:
        return
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        s = build(sparsity, w)
        s.update(w)
        blocks = s.mask.movedim(1, -1).reshape(-1, sparsity.m)
        assert (blocks.sum(dim=1) == sparsity.n).all(), f"blocks keep {blocks.sum(dim=1).tolist()}, not {sparsity.n}"


def check_schedule_rises_to_the_target(sparsity: SparsityConfig) -> None:
    """The scheduled fraction of zeros never falls, never passes the target and reaches it by the end."""
    s = build(sparsity, weight(WEIGHT_SHAPES[0]))
    target = 1.0 - sparsity.density
    fractions = [s.fraction_at(step, TOTAL_STEPS) for step in range(TOTAL_STEPS + 1)]
    assert all(b >= a - 1e-12 for a, b in pairwise(fractions)), f"the schedule falls: {fractions}"
    assert all(0.0 <= f <= target + 1e-12 for f in fractions), f"the schedule leaves [0, {target}]: {fractions}"
    assert abs(fractions[-1] - target) < 1e-12, f"the schedule ends at {fractions[-1]}, not {target}"


def check_masked_weights_are_zero_in_the_forward(sparsity: SparsityConfig) -> None:
    """In a quantized Linear and Conv1d, the weight the forward uses is exactly zero wherever the mask prunes,
    in training (mid-schedule included) and in eval mode, and the output is the one that weight gives."""
    from mpsearch.quant import Policy, apply
    from mpsearch.quant.modules import QuantModule

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.Flatten(1), nn.Linear(8 * 5, 8))
    policy = Policy.uniform(QuantConfig(weight_bits=8, act_bits=None, sparsity=sparsity,
                                        options={"sparsity_every": 3}))
    quantized = apply(model, policy)
    modules = [m for m in quantized.modules() if isinstance(m, QuantModule)]
    assert len(modules) == 2 and all("weight" in m.weight_sparsifiers for m in modules)
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    for step in (TOTAL_STEPS // 2, TOTAL_STEPS):
        for m in modules:
            m.weight_sparsifiers["weight"].on_step(m.weight, step, TOTAL_STEPS)
        for training in (True, False):
            quantized.train(training)
            for m in modules:
                used, mask = m.quantized("weight"), m.weight_sparsifiers["weight"].mask
                assert (used[~mask] == 0).all(), f"pruned weights are not zero (training={training})"
            conv, linear = modules
            expected = nn.functional.linear(
                nn.functional.conv1d(x, conv.quantized("weight"), conv.bias, padding=1).flatten(1),
                linear.quantized("weight"), linear.bias)
            assert torch.equal(quantized(x), expected), f"the forward does not use the masked weight ({training=})"


def check_state_dict_roundtrip(sparsity: SparsityConfig) -> None:
    """A scheduled sparsifier's state loaded into a fresh one (built on another weight) gives the same mask,
    sparsity and output."""
    for shape in WEIGHT_SHAPES:
        w = weight(shape)
        trained = build(sparsity, w, sparsity_every=3)
        trained.on_step(w, TOTAL_STEPS // 2, TOTAL_STEPS)
        assert 0 < trained.sparsity < 1
        fresh = build(sparsity, weight(shape, seed=5) * 3.0)
        fresh.load_state_dict(trained.state_dict())
        assert torch.equal(fresh.mask, trained.mask) and fresh.sparsity == trained.sparsity
        for training in (True, False):
            assert torch.equal(fresh.train(training)(w), trained.train(training)(w)), \
                f"outputs differ after a state_dict round trip (training={training})"


def check_deterministic(sparsity: SparsityConfig) -> None:
    """The same weight and steps give the same mask, ties included."""
    for shape in WEIGHT_SHAPES:
        masks = []
        for _ in range(2):
            w = weight(shape)
            s = build(sparsity, w, sparsity_every=3)
            _run_schedule(s, w)
            masks.append(s.mask.clone())
        assert torch.equal(*masks), "two runs on the same weight gave different masks"


# Checks run for every case of sparsity_cases().
CHECKS: tuple[Callable[[SparsityConfig], None], ...] = (
    check_keeps_the_asked_fraction,
    check_n_of_every_m,
    check_schedule_rises_to_the_target,
    check_masked_weights_are_zero_in_the_forward,
    check_state_dict_roundtrip,
    check_deterministic,
)
