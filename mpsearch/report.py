"""report.html: one self-contained page describing a study from its stored results.

Sections: the settings the study ran with (study.yaml.json), the float baseline, the sensitivity report,
the front of the stored trials, the chosen policies (knee-policy.json and trained/*/metrics.json) and the
knee policy's modelled latency per site. Figures are embedded as PNG data URIs, so the single file opens
anywhere. A section whose artefact is missing says which command writes it; only a study without a
float baseline is an error.

Everything is read from the folder the report is given: a copied study folder reports its own trials
(its optuna.db), not the folder its stored settings were written in. Numbers carry units (percent,
KiB/MiB, ms), and wide tables scroll inside their own box, so the page fits a phone and a wide screen.
This module reads and assembles; report_tables.py turns results into rows, report_html.py into HTML,
report_figures.py draws.
"""

from __future__ import annotations

import html
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mpsearch.artifacts import read_json, write_text
from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.report_html import (
    STYLE,
    flatten,
    frame_table,
    html_table,
    image,
    is_present,
    join_numbers,
    metric_table,
    note,
    png,
    with_intervals,
)
from mpsearch.report_tables import (
    INTERVALS_EXPLAINED,
    WER_HEADER,
    TrialStates,
    front_rows,
    latency_rows,
    not_worse_sentence,
    policy_frame,
    sensitivity_frame,
    trial_states,
)
from mpsearch.units import format_bytes, format_metric, format_ms

if TYPE_CHECKING:
    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SETTINGS_FILE = "study.yaml.json"

class ReportError(MpsearchError):
    """A study has too little stored to report on."""


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
                parts.append(f"trial{'s' if len(states.stopped) > 1 else ''} {join_numbers(states.stopped)} "
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
        notes = "".join(note(n) for n in self.notes)
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts = [
            "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>mpsearch report: {html.escape(self.cfg.name)}</title>", f"<style>{STYLE}</style>", "</head>",
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
        rows = [(k, v) for k, v in flatten(metrics).items() if k != "config_hash" and is_present(v)]
        return ("<p>The float model every trial fine-tunes from (baseline/metrics.json).</p>"
                + metric_table(with_intervals(rows)))

    def sensitivity_section(self) -> str:
        from mpsearch.sensitivity.report import SensitivityReport, plot_traces
        from mpsearch.sensitivity.stage import REPORT_FILE as SENSITIVITY_FILE

        path = self.folder / SENSITIVITY_FILE
        if not path.is_file():
            return note(f"No {SENSITIVITY_FILE} yet; `mpsearch sensitivity` (or `mpsearch search`) computes it.")
        try:
            report = SensitivityReport.load(path)
        except MpsearchError as exc:
            return note(str(exc))
        s = report.settings
        summary = (f"<p>{html.escape(str(s.get('backend', '?')))}: total trace {report.total_trace:.4g} "
                   f"± {report.total_stderr:.2g} over {s.get('batches_used', '?')} batch(es), up to "
                   f"{max(report.probes, default=0)} probes, {'converged' if report.converged else 'not converged'}"
                   f" (tol {s.get('tol', '?')}), {report.seconds:.1f} s. Omega = tr(H)/n x ||Q(W) - W||^2 "
                   "approximates the loss increase of quantising the site alone.</p>")
        return (summary + frame_table(sensitivity_frame(report))
                + image(png(lambda p: plot_traces(report, p)), "per-site Hessian trace"))

    def front_section(self) -> str:
        if self.table is None:
            return note(f"No front: {self.front_missing}")
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
        figure = image(png(lambda p: plot_front(table, p)), "Pareto front")
        if axis:
            figure += f'<p class="meta">{html.escape(axis)}</p>'
        head, rows, classes = front_rows(table)
        explained = f'<p class="meta">{html.escape(INTERVALS_EXPLAINED)}</p>' if WER_HEADER in head else ""
        return (text + figure + "<p>Every distinct complete trial (* on the front, shaded):</p>"
                + html_table(head, rows, classes) + explained)

    def policies_section(self) -> str:
        from mpsearch.search.front_files import KNEE_POLICY

        parts = []
        if self.knee_policy is None:
            parts.append(note(f"No {KNEE_POLICY}; `mpsearch search` writes it when the search ends "
                               f"(or: mpsearch export STUDY.yaml --pick knee --out {KNEE_POLICY})."))
        else:
            trial = self._trial_of(self.knee_policy)
            origin = f"trial {trial}" if trial is not None else "no stored trial has this policy"
            parts.append(f"<h3>Knee of the front ({KNEE_POLICY}; {origin})</h3>")
            if trial is not None:
                row = self.table.row(trial)
                from mpsearch.search.pareto import METRIC_COLUMNS

                metrics = [(k, row[k]) for k in METRIC_COLUMNS
                           if k in row and k in self.table.frame.columns and is_present(row[k])]
                parts.append(metric_table(with_intervals(metrics)))
            parts.append(frame_table(policy_frame(self.knee_policy)))
        trained = sorted(self.folder.glob("trained/*/metrics.json"))
        if trained:
            columns = {p.parent.name: flatten(read_json(p)) for p in trained}
            keys = [k for k in dict.fromkeys(k for metrics in columns.values() for k in metrics)
                    if any(is_present(metrics.get(k)) for metrics in columns.values())]
            rows = [[k, *(format_metric(k, columns[name].get(k)) for name in columns)] for k in keys]
            parts.append("<h3>Trained with a policy (trained/*/metrics.json)</h3>")
            parts.append(html_table(("metric", *columns), rows))
        else:
            parts.append("<p>No policy trained yet (`mpsearch train STUDY.yaml --policy P.json` writes "
                         "trained/&lt;name&gt;/).</p>")
        return "\n".join(parts)

    def latency_section(self) -> str:
        from mpsearch.search.front_files import KNEE_POLICY

        if self.knee_policy is None:
            return note(f"No {KNEE_POLICY}, so no policy to break down.")
        from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile
        from mpsearch.hardware.latency import LatencyReport
        from mpsearch.report_figures import plot_latency

        try:
            workload = Workload.from_dict(self.cfg.hardware.workload, source="hardware.workload")
            model = RooflineLatencyModel(load_profile(self.cfg.hardware.profile), workload)
            report: LatencyReport = model(self._sites(), self.knee_policy)
        except MpsearchError as exc:
            return note(f"The knee policy does not fit the study's model or profile: {exc}")
        where = "on chip" if report.onchip else "off chip (weights re-read every step)"
        summary = (f"<p>Profile {html.escape(report.profile)}: {format_ms(report.latency_ms)} per utterance, "
                   f"weights {format_bytes(report.memory_bytes)} ({where}), average weight bits "
                   f"{report.avg_weight_bits:.2f}. Each site's time is the roofline bound of its compute, weight "
                   "reads and activation traffic.</p>")
        head, rows = latency_rows(report)
        return (summary + image(png(lambda p: plot_latency(report, p)), "latency per site") + html_table(head, rows))

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


