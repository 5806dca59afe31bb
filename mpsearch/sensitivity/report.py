"""SensitivityReport: per-site Hessian traces, their errors and the Omega table; JSON, a text table, a plot.

The report's key hashes the model's weights and the sensitivity settings, so a stage can tell whether
a stored report still describes its baseline.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.artifacts import atomic_path, check_header, read_json, write_json
from mpsearch.config import SensitivityConfig
from mpsearch.errors import MpsearchError
from mpsearch.sensitivity.omega import OmegaRecord, omega_by_site

REPORT_TYPE = "mpsearch.SensitivityReport"
REPORT_VERSION = 1


class SensitivityReportError(MpsearchError):
    """A stored sensitivity report cannot be read."""


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of every state-dict entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def report_key(model: nn.Module, cfg: SensitivityConfig) -> str:
    """Short hash of the model's weights and the sensitivity settings."""
    blob = json.dumps([model_fingerprint(model), cfg.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SensitivityReport:
    """Per-site traces (one entry per site, in site order), standard errors, probes and the Omega table."""

    sites: list[str]
    numel: list[int]
    traces: list[float]
    stderrs: list[float]
    probes: list[int]
    total_stderr: float = math.nan
    omega: list[OmegaRecord] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""
    converged: bool = False

    @property
    def total_trace(self) -> float:
        return float(sum(self.traces))

    @property
    def rel_stderrs(self) -> list[float]:
        return [e / abs(t) if t else (0.0 if e == 0 else math.inf) for t, e in zip(self.traces, self.stderrs)]

    def trace(self, site: str) -> tuple[float, float]:
        """(trace, standard error) of one site."""
        try:
            i = self.sites.index(site)
        except ValueError:
            raise SensitivityReportError(f"Site '{site}' is not in the sensitivity report; it has "
                                         f"{len(self.sites)} sites, e.g. {', '.join(self.sites[:3])}.") from None
        return self.traces[i], self.stderrs[i]

    @property
    def methods(self) -> list[str]:
        return sorted({r.method for r in self.omega})

    @property
    def bits(self) -> list[int]:
        return sorted({r.bits for r in self.omega})

    def omega_for(self, method: str = "uniform") -> dict[str, dict[int, float]]:
        """{site: {bits: Omega}} for one method (what search.ilp.allocate_bits takes)."""
        if method not in self.methods:
            raise SensitivityReportError(f"The sensitivity report has no Omega for method '{method}'; it has "
                                         f"{', '.join(self.methods) or 'none'} (add it to sensitivity.methods).")
        return omega_by_site(self.omega, method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": REPORT_TYPE,
            "_version": REPORT_VERSION,
            "key": self.key,
            "settings": self.settings,
            "seconds": self.seconds,
            "converged": self.converged,
            "total_trace": self.total_trace,
            "total_stderr": _json_float(self.total_stderr),
            "sites": [{"name": n, "numel": k, "trace": t, "stderr": _json_float(e), "probes": p}
                      for n, k, t, e, p in zip(self.sites, self.numel, self.traces, self.stderrs, self.probes)],
            "omega": [r.to_dict() for r in self.omega],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<report>") -> SensitivityReport:
        check_header(data, REPORT_TYPE, REPORT_VERSION, source=source, what="a sensitivity report",
                     noun="report version", remedy="compute it again with `mpsearch sensitivity`",
                     error=SensitivityReportError)
        try:
            rows = data["sites"]
            return cls(
                sites=[r["name"] for r in rows],
                numel=[int(r["numel"]) for r in rows],
                traces=[float(r["trace"]) for r in rows],
                stderrs=[float(r["stderr"]) for r in rows],
                probes=[int(r["probes"]) for r in rows],
                total_stderr=float(data["total_stderr"]),
                omega=[OmegaRecord(**r) for r in data["omega"]],
                settings=dict(data["settings"]),
                seconds=float(data["seconds"]),
                key=str(data["key"]),
                converged=bool(data["converged"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SensitivityReportError(f"{source} is a malformed sensitivity report ({exc!r}); "
                                         "compute it again.") from None

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SensitivityReport:
        path = Path(path)
        if not path.is_file():
            raise SensitivityReportError(f"Sensitivity report '{path}' does not exist; "
                                         "compute it with `mpsearch sensitivity`.")
        try:
            data = read_json(path)
        except ValueError as exc:
            raise SensitivityReportError(f"{path} is not valid JSON ({exc}); compute it again.") from None
        return cls.from_dict(data, source=str(path))


def _json_float(value: float) -> float | str:
    # JSON has no inf; a site estimated from one probe has an unknown (infinite) error.
    return value if math.isfinite(value) else str(value)


def format_sensitivity_table(report: SensitivityReport, method: str | None = None) -> str:
    """One line per site: numel, trace ± stderr, relative error, probes, Omega at each bit width."""
    method = method or (report.methods[0] if report.methods else None)
    omega = report.omega_for(method) if method else {}
    bits = report.bits
    headers = ["site", "numel", "trace", "± stderr", "rel", "probes"] + [f"Ω@{b}" for b in bits]
    body = []
    for i, name in enumerate(report.sites):
        rel = report.rel_stderrs[i]
        body.append([name, str(report.numel[i]), f"{report.traces[i]:.4g}", f"{report.stderrs[i]:.2g}",
                     f"{rel:.1%}" if math.isfinite(rel) else "inf", str(report.probes[i])]
                    + [f"{omega.get(name, {}).get(b, math.nan):.3g}" for b in bits])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    lines = [line(headers), line(["-" * w for w in widths]), *(line(row) for row in body), ""]
    s = report.settings
    lines.append(f"{s.get('backend', '?')}: total trace {report.total_trace:.4g} ± {report.total_stderr:.2g} over "
                 f"{s.get('batches_used', '?')} batch(es), {max(report.probes, default=0)} probes, "
                 f"{'converged' if report.converged else 'NOT converged'} (tol {s.get('tol', '?')}), "
                 f"{report.seconds:.1f} s" + (f"; Omega for method '{method}'" if method else ""))
    return "\n".join(lines)


def plot_traces(report: SensitivityReport, path: str | Path) -> None:
    """Bar chart of per-site traces with ±1 standard error bars, written to `path` (PNG)."""
    # A bare Figure draws with the Agg canvas and leaves pyplot's global backend and figures alone.
    from matplotlib.figure import Figure

    n = len(report.sites)
    errors = [e if math.isfinite(e) else 0.0 for e in report.stderrs]
    fig = Figure(figsize=(max(6.0, 0.45 * n + 2.0), 4.5))
    ax = fig.subplots()
    colors = ["tab:blue" if t >= 0 else "tab:red" for t in report.traces]
    ax.bar(range(n), report.traces, yerr=errors, capsize=3, color=colors)
    ax.set_xticks(range(n))
    ax.set_xticklabels(report.sites, rotation=60, ha="right", fontsize=8)
    magnitudes = [abs(t) for t in report.traces if t]
    if magnitudes and max(magnitudes) > 100 * min(magnitudes):
        # Traces span orders of magnitude (and may be negative): symlog keeps every bar visible.
        ax.set_yscale("symlog", linthresh=min(magnitudes))
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel("Hessian trace (± 1 s.e.; red: negative)")
    ax.set_title(f"Per-site Hessian trace ({report.settings.get('backend', '?')}, "
                 f"{max(report.probes, default=0)} probes)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
