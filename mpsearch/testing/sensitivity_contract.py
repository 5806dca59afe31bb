"""The contract every registered sensitivity backend passes (tests/sensitivity/test_sensitivity_contract.py
runs it over `BACKENDS`): one trace and one standard error per site, non-negative traces of a convex loss,
the same seed giving the same answer, the model left as it was, and traces that agree with the exact
Hessian trace of a tiny quadratic model within their own standard errors.

A check takes a backend's registry name and raises AssertionError with what went wrong.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mpsearch.config import SensitivityConfig

# A tolerance tight enough that each backend's estimate lands about one of its standard errors from the
# exact trace (pyhessian stops on the change of its running mean, which a loose tolerance ends after 4 probes).
CONFIG = SensitivityConfig(batches=1, min_probes=8, max_probes=300, tol=0.003, bits=[4, 8], seed=3)
# How many of its standard errors an estimate may lie from the exact trace (a 4-sigma miss: 6e-5 per site).
SIGMAS = 4.0


class QuadraticToy(nn.Module):
    """y = A x1 + B x2 with a mean squared error: a convex quadratic in (A, B) whose Hessian blocks are known
    exactly, each trace 2/N * sum ||x||^2 of its own input; x2 is scaled up so the two sites differ."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(5, 3, bias=False)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
        return (self.a(x1) + self.b(x2) - y).pow(2).mean()


def toy_case() -> tuple[QuadraticToy, list[tuple[Tensor, Tensor, Tensor]]]:
    """The toy model and its one batch, the same at every call."""
    torch.manual_seed(0)
    model = QuadraticToy()
    gen = torch.Generator().manual_seed(1)
    # Columns of unequal scale, so the Hessian is not a multiple of the identity and probes disagree.
    x1 = torch.randn(16, 4, generator=gen) * torch.tensor([0.5, 1.0, 1.5, 2.0])
    x2 = torch.randn(16, 5, generator=gen) * torch.tensor([1.0, 2.0, 3.0, 0.5, 2.5])
    return model, [(x1, x2, torch.randn(16, 3, generator=gen))]


def exact_traces(model: nn.Module, batch: tuple[Tensor, ...]) -> dict[str, float]:
    """The exact Hessian trace of the loss for each Linear weight (by module name, as its site is named), one
    second derivative per entry."""
    traces = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        (grad,) = torch.autograd.grad(model(*batch), weight, create_graph=True)
        flat = grad.reshape(-1)
        diagonal = [torch.autograd.grad(flat[i], weight, retain_graph=True)[0].reshape(-1)[i]
                    for i in range(flat.numel())]
        traces[name] = float(sum(diagonal))
    return traces


def run(backend: str, cfg: SensitivityConfig = CONFIG):
    """The backend's report on a fresh toy case."""
    from mpsearch.sensitivity.backends import BACKENDS

    model, batches = toy_case()
    return BACKENDS.get(backend)(model, batches, cfg)


@functools.cache
def report(backend: str):
    """run(backend), once per process: the checks that only read the report share it."""
    return run(backend)


def check_a_trace_per_site(backend: str) -> None:
    """One finite trace, standard error and probe count per site, in site order; the report names its backend."""
    from mpsearch.quant import find_sites

    result = report(backend)
    model, _ = toy_case()
    assert result.sites == [s.name for s in find_sites(model)], f"sites {result.sites}"
    assert len(result.traces) == len(result.stderrs) == len(result.probes) == len(result.sites)
    assert all(math.isfinite(t) for t in result.traces), f"traces {result.traces}"
    assert result.settings.get("backend") == backend, f"settings {result.settings}"
    assert {r.bits for r in result.omega} == set(CONFIG.bits), "the Omega table misses the asked bit widths"


def check_nonnegative_on_a_convex_loss(backend: str) -> None:
    """A convex loss has a positive semi-definite Hessian: every site's trace is at least zero."""
    result = report(backend)
    assert all(t >= 0 for t in result.traces), f"negative trace on a convex loss: {result.traces}"


def check_standard_errors_are_reported(backend: str) -> None:
    """Every site has a finite, non-negative standard error from at least two probes, and so has the total."""
    result = report(backend)
    assert all(math.isfinite(e) and e >= 0 for e in result.stderrs), f"standard errors {result.stderrs}"
    assert all(p >= 2 for p in result.probes), f"probes {result.probes}"
    assert math.isfinite(result.total_stderr) and result.total_stderr >= 0, f"total {result.total_stderr}"
    assert any(e > 0 for e in result.stderrs), "no site reports any uncertainty from random probes"


def check_same_seed_same_answer(backend: str) -> None:
    """Two runs with the same seed give identical traces and standard errors."""
    first, second = run(backend), run(backend)
    assert first.traces == second.traces and first.stderrs == second.stderrs, \
        f"{first.traces} != {second.traces} with the same seed"


def check_leaves_the_model_as_it_was(backend: str) -> None:
    """The weights are unchanged, no gradient is left behind, and the training mode is restored."""
    from mpsearch.sensitivity.backends import BACKENDS

    model, batches = toy_case()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    BACKENDS.get(backend)(model, batches, CONFIG)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the weights changed"
    assert all(p.grad is None for p in model.parameters()), "gradients were left on the weights"
    assert model.training, "the model's training mode was not restored"


def check_agrees_with_the_exact_trace(backend: str) -> None:
    """Each site's trace lies within SIGMAS of its standard errors of the exact Hessian trace."""
    result = report(backend)
    model, batches = toy_case()
    exact = exact_traces(model, batches[0])
    for site, trace, stderr in zip(result.sites, result.traces, result.stderrs):
        assert abs(trace - exact[site]) <= SIGMAS * stderr + 1e-6 * abs(exact[site]), \
            f"{site}: trace {trace:.5g} +- {stderr:.2g}, exact {exact[site]:.5g}"


# Checks run for every registered backend.
CHECKS: tuple[Callable[[str], None], ...] = (
    check_a_trace_per_site,
    check_nonnegative_on_a_convex_loss,
    check_standard_errors_are_reported,
    check_same_seed_same_answer,
    check_leaves_the_model_as_it_was,
    check_agrees_with_the_exact_trace,
)
