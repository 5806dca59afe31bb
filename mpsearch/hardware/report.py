"""Plain-text table of a LatencyReport, for the CLI to print."""

from __future__ import annotations

from mpsearch.hardware.latency import LatencyReport

_HEADERS = ("site", "bits", "act bits", "sparsity", "bytes", "steps", "time_us", "bound")


def _sparsity(density: float) -> str:
    return "-" if density >= 1.0 else f"{1.0 - density:.0%}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.2f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def format_latency_table(report: LatencyReport) -> str:
    """One line per site (site, bits, act bits, sparsity, bytes, steps, time_us, bound), then totals."""
    body = [(r.name, str(r.weight_bits), str(r.act_bits), _sparsity(r.density), str(r.weight_bytes),
             f"{r.steps:g}", f"{r.time_us:.1f}", r.bound) for r in report.rows]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(_HEADERS)]
    left = {0, 7}

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(_HEADERS), line(["-" * w for w in widths])]
    lines += [line(row) for row in body]
    where = "on chip" if report.onchip else "off chip (weights re-read every step)"
    lines.append("")
    lines.append(f"profile {report.profile}: latency {report.latency_ms:.3f} ms per utterance, "
                 f"weights {_size(report.memory_bytes)} ({report.memory_bytes} bytes, {where}), "
                 f"average weight bits {report.avg_weight_bits:.2f}")
    return "\n".join(lines)
