"""What report.html shows, as text rows and sentences: what became of the trials, the front table with
WER intervals and the paired difference against uniform 8-bit, latency per site, the sensitivity table
and a policy's rules."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mpsearch.report_html import DELTA_HEADER, column_header, plain
from mpsearch.units import format_bytes, format_delta, format_metric, format_rate

if TYPE_CHECKING:
    import pandas as pd

    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable


@dataclass
class TrialStates:
    """What became of a study's trials. `stopped` are RUNNING trials whose process is gone (heartbeat
    stale, or none long after the trial started); `interrupted` are trials failed for that reason by a
    later search, whose points were queued again."""

    counts: dict[str, int]
    stopped: list[int]
    interrupted: list[int]
    waiting: int

    def describe(self) -> str:
        order = ("complete", "running", "stopped", "interrupted", "fail", "waiting", "pruned")
        names = {"stopped": "interrupted", "fail": "failed", "interrupted": "interrupted and queued again",
                 "waiting": "queued"}
        keys = [*order, *(k for k in self.counts if k not in order)]
        return ", ".join(f"{self.counts[k]} {names.get(k, k)}" for k in keys if self.counts.get(k))


def trial_states(trials, ages: dict[int, float], grace_seconds: float,
                 now: datetime | None = None) -> TrialStates:
    """Count trials by state, telling a RUNNING trial whose heartbeat is older than `grace_seconds` (or
    that has none and started longer ago) from a live one, and an interrupted failure from a real one."""
    from mpsearch.search.storage import STOPPED_WITHOUT_RESULT, fail_reason

    now = now or datetime.now()
    counts: dict[str, int] = {}
    stopped, interrupted = [], []
    for t in sorted(trials, key=lambda t: t.number):
        state = t.state.name.lower()
        if state == "running":
            age = ages.get(t.number)
            if age is None and t.datetime_start is not None:
                age = (now - t.datetime_start).total_seconds()
            if age is not None and age > grace_seconds:
                state = "stopped"
                stopped.append(t.number)
        elif state == "fail":
            reason = fail_reason(t) or ""
            if reason.startswith("interrupted") or reason == STOPPED_WITHOUT_RESULT:
                state = "interrupted"
                interrupted.append(t.number)
        counts[state] = counts.get(state, 0) + 1
    return TrialStates(counts, stopped, interrupted, counts.get("waiting", 0))


WER_HEADER = "WER [95% CI]"
INTERVALS_EXPLAINED = ("WER [95% CI]: the dev WER with its 95% bootstrap interval over utterances. ΔWER: the "
                       "difference from the uniform 8-bit trial on the same utterances, in percentage points, with "
                       "its paired 95% bootstrap interval.")


def not_worse_sentence(table: FrontTable) -> str | None:
    """One sentence naming the front policies not significantly worse than uniform 8-bit (the 95% interval
    of the paired WER difference reaches 0 or below); None when the table has no such intervals."""
    from mpsearch.search.pareto import UNIFORM_REFERENCE_ORIGIN

    frame = table.frame
    if "delta_ci_low" not in frame or frame["delta_ci_low"].isna().all():
        return None
    front = frame[frame["on_front"] & (frame["origin"] != UNIFORM_REFERENCE_ORIGIN) & frame["delta_ci_low"].notna()]
    if front.empty:
        return None
    fine = front[front["delta_ci_low"] <= 0]
    if fine.empty:
        return ("Every front policy is significantly worse than uniform 8-bit: the 95% interval of each one's "
                "WER difference lies above 0.")
    names = ", ".join(f"trial {int(r.trial)} ({r.origin}, {format_delta(r.delta_wer_vs_u8)} points)"
                      for r in fine.itertuples())
    return ("Front policies not significantly worse than uniform 8-bit (the 95% interval of the WER difference "
            f"on the same utterances reaches 0 or below): {names}.")


def front_rows(table: FrontTable) -> tuple[list[str], list[list[str]], list[str]]:
    """The front table as header, text rows and row classes: units in the headers or cells, WER with its
    interval, the paired difference against uniform 8-bit, only the metrics the study measured."""
    from mpsearch.search.pareto import METRIC_COLUMNS

    frame = table.frame
    present = [c for c in frame.columns if c not in ("trial", "on_front", "origin") and frame[c].notna().any()]
    metric_set = set(METRIC_COLUMNS) | set(table.objectives)
    columns: list[tuple[str, Callable[[Any], str]]] = [
        ("trial", lambda r: f"{int(r['trial'])}{' *' if r['on_front'] else ''}"),
        ("origin", lambda r: str(r["origin"])),
    ]
    for name in present:
        if name in ("wer_ci_low", "wer_ci_high", "delta_ci_low", "delta_ci_high"):
            continue
        if name == "wer" and "wer_ci_low" in present:
            columns.append((WER_HEADER, lambda r: format_rate(r["wer"], r["wer_ci_low"], r["wer_ci_high"])))
        elif name == "delta_wer_vs_u8":
            columns.append((DELTA_HEADER, _delta_cell))
        elif name in metric_set:
            columns.append((column_header(name), lambda r, n=name: format_metric(n, r[n])))
        else:  # searched fields: "<group>.weight_bits" reads "<group> bits"
            header = name.replace(".weight_bits", " bits").replace(".", " ")
            columns.append((header, lambda r, n=name: plain(r[n])))
    records = frame.to_dict("records")
    rows = [[render(r) for _, render in columns] for r in records]
    classes = ["front" if r["on_front"] else "" for r in records]
    return [h for h, _ in columns], rows, classes


def _delta_cell(row: dict[str, Any]) -> str:
    from mpsearch.search.pareto import UNIFORM_REFERENCE_ORIGIN

    if row["origin"] == UNIFORM_REFERENCE_ORIGIN and row["delta_wer_vs_u8"] == 0:
        return "reference"
    return format_delta(row["delta_wer_vs_u8"], row.get("delta_ci_low"), row.get("delta_ci_high"))


def latency_rows(report) -> tuple[list[str], list[list[str]]]:
    """The latency report per site, times in one unit per column, sizes in KiB, the share of the total."""
    from mpsearch.units import axis_unit, format_in

    frame = report.to_frame()
    total_us = report.latency_ms * 1e3
    time_columns = ("compute_us", "weight_read_us", "activation_us", "time_us")
    units = {c: axis_unit(c, frame[c]) for c in time_columns}
    names = {"compute_us": "compute", "weight_read_us": "weight reads", "activation_us": "activations",
             "time_us": "time", "weight_bytes": "weights", "weight_bits": "w bits", "act_bits": "a bits"}
    head = ["site", "kind", "step", "w bits", "a bits", "density", "weights", "steps",
            *(f"{names[c]} ({units[c].symbol})" for c in time_columns), "bound", "share"]
    rows = []
    for r in frame.to_dict("records"):
        rows.append([r["name"], r["kind"], r["step"], str(r["weight_bits"]), str(r["act_bits"]),
                     f"{r['density']:.2f}", format_bytes(r["weight_bytes"]), plain(r["steps"]),
                     *(format_in(r[c], units[c]) for c in time_columns), r["bound"],
                     f"{r['time_us'] / total_us:.1%}" if total_us else "-"])
    return head, rows


def sensitivity_frame(report) -> pd.DataFrame:
    """One row per site: numel, trace, stderr, rel_stderr, probes, then omega_<method>_<bits>."""
    import pandas as pd

    frame = pd.DataFrame({"site": report.sites, "numel": report.numel, "trace": report.traces,
                          "stderr": report.stderrs, "rel_stderr": report.rel_stderrs, "probes": report.probes})
    for method in report.methods:
        omega = report.omega_for(method)
        for bits in report.bits:
            frame[f"omega_{method}_{bits}"] = [omega.get(site, {}).get(bits, math.nan) for site in report.sites]
    return frame


def policy_frame(policy: Policy) -> pd.DataFrame:
    """One row per site the policy names (or per rule, when it carries no site list)."""
    import pandas as pd

    names = policy.site_names or list(policy.rules)
    rows = []
    for name in names:
        cfg = policy.resolve(name) if policy.site_names else policy.rules[name]
        data = cfg.to_dict() if cfg is not None else {}
        sparsity = data.get("sparsity")
        rows.append({"site": name, "weight_bits": data.get("weight_bits", "float"), "act_bits": data.get("act_bits"),
                     "method": data.get("method", "-"), "granularity": data.get("granularity", "-"),
                     "sparsity": json.dumps(sparsity, sort_keys=True) if sparsity else "-"})
    return pd.DataFrame(rows, columns=["site", "weight_bits", "act_bits", "method", "granularity", "sparsity"])
