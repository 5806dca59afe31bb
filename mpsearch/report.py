"""report.html: one self-contained page describing a study from its stored results.

Sections: the settings the study ran with (study.yaml.json), the float baseline, the sensitivity report,
the front of the stored trials, the chosen policies (knee-policy.json and trained/*/metrics.json) and the
knee policy's modelled latency per site. Figures are embedded as PNG data URIs, so the single file opens
anywhere. A section whose artefact is missing says which command writes it; only a study without a
float baseline is an error.

Everything is read from the folder the report is given: a copied study folder reports its own trials
(its optuna.db), not the folder its stored settings were written in. Numbers carry units (percent,
KiB/MiB, ms), and wide tables scroll inside their own box, so the page fits a phone and a wide screen.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsearch.artifacts import read_json, write_text
from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.units import format_bytes, format_delta, format_metric, format_ms, format_rate, is_error_rate

if TYPE_CHECKING:
    import pandas as pd

    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SETTINGS_FILE = "study.yaml.json"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1800px;
       padding: 1em 1.5em; color: #222; line-height: 1.4; }
p, details, ul { max-width: 64em; }
h1 { font-size: 1.6em; overflow-wrap: anywhere; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav { display: flex; flex-wrap: wrap; gap: .2em 1.2em; }
div.wide { overflow-x: auto; max-width: 100%; margin: .8em 0; }
table.data { border-collapse: collapse; font-size: .85em; }
table.data th, table.data td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
table.data th { background: #f3f3f3; } table.data .text { text-align: left; }
table.data tr.front td { background: #eef4fb; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .8em; overflow-x: auto; font-size: .8em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
p.meta { color: #666; font-size: .9em; overflow-wrap: anywhere; }
summary { cursor: pointer; }
@media (max-width: 600px) { body { padding: .5em .8em; } table.data { font-size: .75em; } }
@media print { body { max-width: none; margin: 0; } table.data { font-size: .6em; } div.wide { overflow: visible; } }
"""


class ReportError(MpsearchError):
    """A study has too little stored to report on."""


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


def study_config_of_folder(folder: str | Path) -> StudyConfig:
    """The settings a study folder's results were made with, pointed at that folder."""
    folder = Path(folder)
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise ReportError(f"{folder} has no {SETTINGS_FILE}, so it is not a study folder that has run; pass the "
                          "study YAML instead (mpsearch report STUDY.yaml).")
    try:
        stored = StudyConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except ValueError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); pass the study YAML instead.") from None
    return stored.model_copy(update={"output_dir": str(folder)})


class StudyReport:
    """The stored results of one study, rendered section by section into one HTML page.

    `folder` (default: the config's study folder) is where every result is read from, trials included."""

    def __init__(self, cfg: StudyConfig, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else cfg.study_dir
        if not (self.folder / "baseline" / "metrics.json").is_file():
            raise ReportError(f"Study '{cfg.name}' has no float baseline in {self.folder / 'baseline'}; "
                              "run `mpsearch search` (or `mpsearch train`) on the study first.")
        self.notes: list[str] = []
        self.front_missing = ""
        self.settings_text, self.cfg = self._stored_settings(cfg)
        self.table = self._front_table()
        self.states = self._trial_states()
        self.knee_policy = self._knee_policy()

    # --- what is stored ----------------------------------------------------------------------------------
    def _stored_settings(self, current: StudyConfig) -> tuple[str | None, StudyConfig]:
        # The results were made under the stored settings; reading trials and modelling latency with them
        # keeps the report true to the results even after the YAML was edited. Their output_dir names
        # where the study first ran; the folder given here (a copy, perhaps) is where its results are.
        here = {"output_dir": str(self.folder)}
        path = self.folder / SETTINGS_FILE
        if not path.is_file():
            self.notes.append(f"No {SETTINGS_FILE} in the study folder; the settings shown are the study YAML's.")
            return None, current.model_copy(update=here)
        text = path.read_text()
        try:
            stored = StudyConfig.from_dict(json.loads(text), source=str(path))
        except (ValueError, ConfigError) as exc:
            self.notes.append(f"{SETTINGS_FILE} could not be read ({str(exc).splitlines()[0]}); the report uses "
                              "the study YAML's settings.")
            return None, current.model_copy(update=here)
        if stored.model_copy(update=here).model_dump() != current.model_copy(update=here).model_dump():
            self.notes.append("The study YAML differs from the settings stored with these results; the report "
                              f"follows the stored ones ({SETTINGS_FILE}).")
        return text, stored.model_copy(update=here)

    def _front_table(self) -> FrontTable | None:
        from mpsearch.search.pareto import load_front_table

        try:
            return load_front_table(self.cfg)
        except MpsearchError as exc:
            self.front_missing = str(exc)
            return None

    def _trial_states(self) -> TrialStates | None:
        if self.table is None:
            return None
        states = trial_states(self.table.trials.values(), self._heartbeat_ages(), self.cfg.search.heartbeat_seconds)
        if states.stopped or states.waiting:
            parts = []
            if states.stopped:
                parts.append(f"trial{'s' if len(states.stopped) > 1 else ''} {_numbers(states.stopped)} "
                             f"{'were' if len(states.stopped) > 1 else 'was'} running when its search process "
                             f"stopped (no heartbeat for over {self.cfg.search.heartbeat_seconds} s)")
            if states.waiting:
                parts.append(f"{states.waiting} queued point{'s' if states.waiting > 1 else ''} never ran")
            self.notes.append("The search was interrupted: " + "; ".join(parts) + ". The front holds only the "
                              "trials that completed; run `mpsearch search` on the study again to finish it.")
        return states

    def _heartbeat_ages(self) -> dict[int, float]:
        from sqlalchemy.exc import SQLAlchemyError

        from mpsearch.search.runs import heartbeat_ages
        from mpsearch.search.storage import open_storage

        try:
            storage = open_storage(self.cfg, read_only=True)
            return heartbeat_ages(storage, storage.get_study_id_from_name(self.cfg.name))
        except (MpsearchError, SQLAlchemyError, KeyError) as exc:  # no heartbeat table: every trial judged by its start
            log.debug("no heartbeats read: %s", exc)
            return {}

    def _knee_policy(self) -> Policy | None:
        from mpsearch.quant import Policy
        from mpsearch.search.front_files import KNEE_POLICY

        path = self.folder / KNEE_POLICY
        if not path.is_file():
            return None
        try:
            return Policy.load(path)
        except MpsearchError as exc:
            self.notes.append(f"{KNEE_POLICY} could not be read ({exc}).")
            return None

    # --- the page ----------------------------------------------------------------------------------------
    def render(self) -> str:
        from mpsearch.search.storage import storage_url

        # The answer first (front, the policy to deploy, where its time goes), then the evidence behind
        # it, then the settings, which are long and rarely read.
        sections = [
            ("front", "Pareto front", self.front_section),
            ("policies", "Chosen policies", self.policies_section),
            ("latency", "Latency of the knee policy per site", self.latency_section),
            ("sensitivity", "Sensitivity", self.sensitivity_section),
            ("baseline", "Float baseline", self.baseline_section),
            ("settings", "Settings", self.settings_section),
        ]
        bodies = [(key, title, build()) for key, title, build in sections]
        nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in bodies)
        notes = "".join(_note(n) for n in self.notes)
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts = [
            "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>mpsearch report: {html.escape(self.cfg.name)}</title>", f"<style>{_STYLE}</style>", "</head>",
            "<body>", f"<h1>mpsearch study <code>{html.escape(self.cfg.name)}</code></h1>",
            (f'<p class="meta">Study folder {html.escape(str(self.folder.resolve()))}; trials read from '
             f'{html.escape(storage_url(self.cfg))}; report written {created}.</p>'),
            f"<nav>{nav}</nav>", notes,
            *(f'<section id="{key}"><h2>{html.escape(title)}</h2>\n{body}</section>' for key, title, body in bodies),
            "</body>", "</html>",
        ]
        return "\n".join(parts) + "\n"

    def settings_section(self) -> str:
        import yaml

        data = json.loads(self.settings_text) if self.settings_text else self.cfg.model_dump(mode="json")
        return (f"<details><summary>The study as it ran ({SETTINGS_FILE}), every default filled in</summary>"
                f"<pre>{html.escape(yaml.safe_dump(data, sort_keys=False))}</pre></details>")

    def baseline_section(self) -> str:
        metrics = read_json(self.folder / "baseline" / "metrics.json")
        rows = [(k, v) for k, v in _flatten(metrics).items() if k != "config_hash" and _present(v)]
        return ("<p>The float model every trial fine-tunes from (baseline/metrics.json).</p>"
                + _metric_table(_with_intervals(rows)))

    def sensitivity_section(self) -> str:
        from mpsearch.sensitivity.report import SensitivityReport, plot_traces
        from mpsearch.sensitivity.stage import REPORT_FILE as SENSITIVITY_FILE

        path = self.folder / SENSITIVITY_FILE
        if not path.is_file():
            return _note(f"No {SENSITIVITY_FILE} yet; `mpsearch sensitivity` (or `mpsearch search`) computes it.")
        try:
            report = SensitivityReport.load(path)
        except MpsearchError as exc:
            return _note(str(exc))
        s = report.settings
        summary = (f"<p>{html.escape(str(s.get('backend', '?')))}: total trace {report.total_trace:.4g} "
                   f"± {report.total_stderr:.2g} over {s.get('batches_used', '?')} batch(es), up to "
                   f"{max(report.probes, default=0)} probes, {'converged' if report.converged else 'not converged'}"
                   f" (tol {s.get('tol', '?')}), {report.seconds:.1f} s. Omega = tr(H)/n x ||Q(W) - W||^2 "
                   "approximates the loss increase of quantising the site alone.</p>")
        return (summary + _frame_table(sensitivity_frame(report))
                + _image(_png(lambda p: plot_traces(report, p)), "per-site Hessian trace"))

    def front_section(self) -> str:
        if self.table is None:
            return _note(f"No front: {self.front_missing}")
        from mpsearch.report_figures import front_axis_note, plot_front
        from mpsearch.search.record import older_baseline_note

        table = self.table
        text = (f"<p>{len(table.front)} of {len(table.frame)} distinct complete trials on the front. Trials: "
                f"{html.escape(self.states.describe())}. Objectives {', '.join(table.objectives)} (all minimised); "
                f"hypervolume {table.hypervolume:.4g} against the reference point "
                f"{html.escape(table.reference.describe())}.</p>")
        older = older_baseline_note(len(table.older_baseline))
        if older:
            text += f"<p>{html.escape(older[0].upper() + older[1:])}.</p>"
        if table.duplicates:
            repeats = "; ".join(f"trial {k} by {', '.join(map(str, v))}" for k, v in sorted(table.duplicates.items()))
            text += f"<p>Trials repeating an earlier point, shown once: {html.escape(repeats)}.</p>"
        significance = not_worse_sentence(table)
        if significance:
            text += f"<p>{html.escape(significance)}</p>"
        axis = front_axis_note(table)
        figure = _image(_png(lambda p: plot_front(table, p)), "Pareto front")
        if axis:
            figure += f'<p class="meta">{html.escape(axis)}</p>'
        head, rows, classes = front_rows(table)
        explained = f'<p class="meta">{html.escape(INTERVALS_EXPLAINED)}</p>' if WER_HEADER in head else ""
        return (text + figure + "<p>Every distinct complete trial (* on the front, shaded):</p>"
                + _table(head, rows, classes) + explained)

    def policies_section(self) -> str:
        from mpsearch.search.front_files import KNEE_POLICY

        parts = []
        if self.knee_policy is None:
            parts.append(_note(f"No {KNEE_POLICY}; `mpsearch search` writes it when the search ends "
                               f"(or: mpsearch export STUDY.yaml --pick knee --out {KNEE_POLICY})."))
        else:
            trial = self._trial_of(self.knee_policy)
            origin = f"trial {trial}" if trial is not None else "no stored trial has this policy"
            parts.append(f"<h3>Knee of the front ({KNEE_POLICY}; {origin})</h3>")
            if trial is not None:
                row = self.table.row(trial)
                from mpsearch.search.pareto import METRIC_COLUMNS

                metrics = [(k, row[k]) for k in METRIC_COLUMNS
                           if k in row and k in self.table.frame.columns and _present(row[k])]
                parts.append(_metric_table(_with_intervals(metrics)))
            parts.append(_frame_table(policy_frame(self.knee_policy)))
        trained = sorted(self.folder.glob("trained/*/metrics.json"))
        if trained:
            columns = {p.parent.name: _flatten(read_json(p)) for p in trained}
            keys = [k for k in dict.fromkeys(k for metrics in columns.values() for k in metrics)
                    if any(_present(metrics.get(k)) for metrics in columns.values())]
            rows = [[k, *(format_metric(k, columns[name].get(k)) for name in columns)] for k in keys]
            parts.append("<h3>Trained with a policy (trained/*/metrics.json)</h3>")
            parts.append(_table(("metric", *columns), rows))
        else:
            parts.append("<p>No policy trained yet (`mpsearch train STUDY.yaml --policy P.json` writes "
                         "trained/&lt;name&gt;/).</p>")
        return "\n".join(parts)

    def latency_section(self) -> str:
        from mpsearch.search.front_files import KNEE_POLICY

        if self.knee_policy is None:
            return _note(f"No {KNEE_POLICY}, so no policy to break down.")
        from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile
        from mpsearch.hardware.latency import LatencyReport
        from mpsearch.report_figures import plot_latency

        try:
            workload = Workload.from_dict(self.cfg.hardware.workload, source="hardware.workload")
            model = RooflineLatencyModel(load_profile(self.cfg.hardware.profile), workload)
            report: LatencyReport = model(self._sites(), self.knee_policy)
        except MpsearchError as exc:
            return _note(f"The knee policy does not fit the study's model or profile: {exc}")
        where = "on chip" if report.onchip else "off chip (weights re-read every step)"
        summary = (f"<p>Profile {html.escape(report.profile)}: {format_ms(report.latency_ms)} per utterance, "
                   f"weights {format_bytes(report.memory_bytes)} ({where}), average weight bits "
                   f"{report.avg_weight_bits:.2f}. Each site's time is the roofline bound of its compute, weight "
                   "reads and activation traffic.</p>")
        head, rows = latency_rows(report)
        return (summary + _image(_png(lambda p: plot_latency(report, p)), "latency per site") + _table(head, rows))

    def _sites(self):
        # The model as the study builds it, without a Study: opening one writes into the study folder,
        # and a report only reads.
        from mpsearch.data.tokenizer import CharTokenizer
        from mpsearch.models import build_model
        from mpsearch.quant import find_sites

        path = self.folder / "tokenizer.json"
        tokenizer = CharTokenizer.load(path) if path.is_file() else CharTokenizer()
        return find_sites(build_model(self.cfg.model, vocab_size=tokenizer.vocab_size,
                                      n_mels=self.cfg.data.features.n_mels))

    def _trial_of(self, policy: Policy) -> int | None:
        if self.table is None:
            return None
        front_first = [*self.table.front_numbers(), *(int(n) for n in self.table.frame["trial"])]
        for number in dict.fromkeys(front_first):
            if self.table.trials[number].user_attrs.get("policy") and self.table.policy(number) == policy:
                return number
        return None


# --- trial states -----------------------------------------------------------------------------------------
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


# --- tables -----------------------------------------------------------------------------------------------
WER_HEADER = "WER [95% CI]"
DELTA_HEADER = "ΔWER vs uniform-8 [95% CI]"
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
            columns.append((_header(name), lambda r, n=name: format_metric(n, r[n])))
        else:  # searched fields: "<group>.weight_bits" reads "<group> bits"
            header = name.replace(".weight_bits", " bits").replace(".", " ")
            columns.append((header, lambda r, n=name: _plain(r[n])))
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
                     f"{r['density']:.2f}", format_bytes(r["weight_bytes"]), _plain(r["steps"]),
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


def render_report(cfg: StudyConfig, folder: str | Path | None = None) -> str:
    """The study's report as one HTML page (figures embedded); results read from `folder` (default: the
    config's study folder)."""
    return StudyReport(cfg, folder).render()


def write_report(cfg: StudyConfig, path: str | Path | None = None, folder: str | Path | None = None) -> Path:
    """Write the report (default: report.html in the study folder), atomically; returns its path."""
    folder = Path(folder) if folder is not None else cfg.study_dir
    path = Path(path) if path else folder / REPORT_FILE
    write_text(path, render_report(cfg, folder))
    log.info("wrote %s", path)
    return path


# --- HTML pieces ------------------------------------------------------------------------------------------
_HEADERS = {"wer": "WER", "test_wer": "test WER", "cer": "CER", "test_cer": "test CER",
            "latency_ms": "latency", "size_bytes": "weight size", "avg_weight_bits": "avg weight bits",
            "delta_wer_vs_u8": DELTA_HEADER}


def _header(name: str) -> str:
    return _HEADERS.get(name, name)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _png(draw: Callable[[Path], None]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> str:
    from mpsearch.search.pareto import format_value

    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_value(float(value) if isinstance(value, float) else value)


def _table(head: list[str] | tuple[str, ...], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Cells are text already; a column of numbers aligns right, any other left, its header with it."""
    text = [not all(_numeric(row[i]) or row[i] in ("-", "reference") for row in rows) for i in range(len(head))]
    text[0] = True

    def cell(tag: str, value: Any, i: int) -> str:
        return f"<{tag}{' class=text' if text[i] else ''}>{html.escape(str(value))}</{tag}>"

    header = "".join(cell("th", h, i) for i, h in enumerate(head))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        body.append(f"<tr{cls}>{''.join(cell('td', c, i) for i, c in enumerate(row))}</tr>")
    return (f'<div class="wide"><table class="data"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _numeric(text: str) -> bool:
    head = str(text).lstrip("+-").split(" ", 1)[0].replace(",", "").rstrip("%*")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _frame_table(frame: pd.DataFrame) -> str:
    return _table(list(frame.columns), [[_plain(v) for v in row] for row in frame.itertuples(index=False)])


def _with_intervals(pairs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Metric rows as text, a rate's `_ci_low`/`_ci_high` folded into its row as "12.3% [11.1, 13.6]" and
    the delta's interval into the delta's row."""
    values = dict(pairs)
    rows = []
    for key, value in pairs:
        base = key.rsplit(".", 1)[-1]
        if base.endswith(("_ci_low", "_ci_high")):
            continue
        prefix = key[: len(key) - len(base)]
        if base == "delta_wer_vs_u8":
            rows.append((DELTA_HEADER, format_delta(value, values.get(prefix + "delta_ci_low"),
                                                    values.get(prefix + "delta_ci_high"))))
        elif is_error_rate(key) and prefix + f"{base}_ci_low" in values:
            rows.append((f"{_header(key)} [95% CI]", format_rate(value, values[prefix + f"{base}_ci_low"],
                                                                  values.get(prefix + f"{base}_ci_high"))))
        else:
            rows.append((_header(key), format_metric(key, value)))
    return rows


def _metric_table(rows: list[tuple[str, str]]) -> str:
    return _table(("metric", "value"), [list(r) for r in rows])


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists (training history) are left out of the tables."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat
