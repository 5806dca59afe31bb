"""The HAWQ-V2 sensitivity metric: Omega(site, bits, method) = tr(H_site) / n_site * ||Q_b(W) - W||^2.

tr(H)/n is the site's mean curvature; ||Q_b(W) - W||^2 is the squared error the method's quantizer
makes at b bits, so Omega approximates the loss increase quantizing the site alone would cause.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.quantizers import QUANTIZERS
from mpsearch.quant.sites import Site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OmegaRecord:
    """One row of the Omega table; `quant_error` is ||Q_b(W) - W||^2."""

    site: str
    method: str
    bits: int
    omega: float
    trace: float
    quant_error: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def quantization_error(weight: Tensor, method: str, bits: int) -> float:
    """||Q_b(W) - W||^2 with the registered `method`'s quantizer at its defaults (per-channel, symmetric).

    Learned quantizers (lsq) are scored at their initial step, before any training.
    """
    cfg = QuantConfig(weight_bits=bits, method=method)
    # eval mode: the deployed quantized weight (admm and s8bqat train on the float weight)
    quantizer = QUANTIZERS.get(method).from_config(cfg, weight).eval()
    w = weight.detach().float()
    return float((quantizer(w) - w).pow(2).sum())


def omega_table(model: nn.Module, sites: Sequence[Site], traces: Sequence[float], methods: Iterable[str],
                bits: Iterable[int]) -> list[OmegaRecord]:
    """Omega for every site x method x bit width, as records (site order, then method, then bits).

    A negative trace (the estimate of a site at a saddle, or noise) is scored as 0: the second-order
    model then predicts no loss increase, where a negative value would reward coarser quantization.
    """
    methods, bits = list(methods), sorted(bits)
    for method in methods:
        QUANTIZERS.get(method)  # an unknown method fails here, listing the registered ones
    negative = [s.name for s, t in zip(sites, traces) if t < 0]
    if negative:
        log.warning("%d site(s) have a negative Hessian trace estimate and are scored as insensitive "
                    "(Omega = 0): %s", len(negative),
                    ", ".join(negative[:5]) + (" ..." if len(negative) > 5 else ""))
    modules = dict(model.named_modules())
    records = []
    for site, trace in zip(sites, traces):
        weight = getattr(modules[site.module], site.param)
        curvature = max(trace, 0.0) / site.numel
        for method in methods:
            for b in bits:
                error = quantization_error(weight, method, b)
                records.append(OmegaRecord(site.name, method, b, curvature * error, float(trace), error))
    return records


def omega_by_site(records: Iterable[OmegaRecord | dict], method: str = "uniform") -> dict[str, dict[int, float]]:
    """{site: {bits: Omega}} for one method, the form `search.ilp.allocate_bits` takes."""
    table: dict[str, dict[int, float]] = {}
    for r in records:
        r = r if isinstance(r, dict) else r.to_dict()
        if r["method"] == method:
            table.setdefault(r["site"], {})[int(r["bits"])] = float(r["omega"])
    return table
