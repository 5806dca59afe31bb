"""The lambda sweep as a text table: lambda, expected vs exact latency, size, each group's choice."""

from __future__ import annotations

from collections.abc import Sequence

from mpsearch.supernet.search import SupernetCandidate


def _group(prefix: str) -> str:
    return prefix.split("[", 1)[0]


def group_choices(candidate: SupernetCandidate) -> dict[str, str]:
    """Group name -> its choice; an untied group lists its sites' choices ("4b,4b,8b")."""
    grouped: dict[str, list[str]] = {}
    for prefix, label in candidate.choices.items():
        grouped.setdefault(_group(prefix), []).append(label)
    return {group: ",".join(labels) for group, labels in grouped.items()}


def format_supernet_table(candidates: Sequence[SupernetCandidate]) -> str:
    rows = [group_choices(c) for c in candidates]
    groups = list(dict.fromkeys(g for row in rows for g in row))
    header = ["lambda", "expected ms", "exact ms", "size KiB", *groups]
    body = [[f"{c.lam:g}", f"{c.expected_latency_ms:.3f}", f"{c.latency_ms:.3f}", f"{c.size_bytes / 1024:.1f}",
             *(row.get(g, "-") for g in groups)] for c, row in zip(candidates, rows)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        cells = [cell.rjust(w) if i < 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])
