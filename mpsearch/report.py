"""report.html: one self-contained page describing a study from its stored results.

Sections: the settings the study ran with (study.yaml.json), the float baseline, the sensitivity report,
the front of the stored trials, the chosen policies (knee-policy.json and trained/*/metrics.json) and the
knee policy's modelled latency per site. Figures are embedded as PNG data URIs, so the single file opens
anywhere. A section whose artefact is missing says which command writes it; only a study without a
float baseline is an error.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsearch.artifacts import read_json, write_text
from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError, MpsearchError

if TYPE_CHECKING:
    import pandas as pd

    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SETTINGS_FILE = "study.yaml.json"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table.data { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
table.data th { background: #f3f3f3; } table.data td:first-child, table.data th:first-child { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .8em; overflow-x: auto; font-size: .8em; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
p.meta { color: #666; font-size: .9em; }
div.wide { overflow-x: auto; }
summary { cursor: pointer; }
@media print { body { max-width: none; margin: 0; } table.data { font-size: .6em; } }
"""


class ReportError(MpsearchError):
    """A study has too little stored to report on."""


class StudyReport:
    """The stored results of one study, rendered section by section into one HTML page."""

    def __init__(self, cfg: StudyConfig):
        self.folder = cfg.study_dir
        if not (self.folder / "baseline" / "metrics.json").is_file():
            raise ReportError(f"Study '{cfg.name}' has no float baseline in {self.folder / 'baseline'}; "
                              "run `mpsearch search` (or `mpsearch train`) on the study first.")
        self.notes: list[str] = []
        self.front_missing = ""
        self.settings_text, self.cfg = self._stored_settings(cfg)
        self.table = self._front_table()
        self.knee_policy = self._knee_policy()

    # --- what is stored ----------------------------------------------------------------------------------
    def _stored_settings(self, current: StudyConfig) -> tuple[str | None, StudyConfig]:
        # The results were made under the stored settings; reading trials and modelling latency with them
        # keeps the report true to the results even after the YAML was edited.
        path = self.folder / SETTINGS_FILE
        if not path.is_file():
            self.notes.append(f"No {SETTINGS_FILE} in the study folder; the settings shown are the study YAML's.")
            return None, current
        text = path.read_text()
        try:
            stored = StudyConfig.from_dict(json.loads(text), source=str(path))
        except (ValueError, ConfigError) as exc:
            self.notes.append(f"{SETTINGS_FILE} could not be read ({str(exc).splitlines()[0]}); the report uses "
                              "the study YAML's settings.")
            return None, current
        if stored.model_dump() != current.model_dump():
            self.notes.append("The study YAML differs from the settings stored with these results; the report "
                              f"follows the stored ones ({SETTINGS_FILE}).")
        return text, stored

    def _front_table(self) -> FrontTable | None:
        from mpsearch.search.pareto import load_front_table

        try:
            return load_front_table(self.cfg)
        except MpsearchError as exc:
            self.front_missing = str(exc)
            return None

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
            f"<title>mpsearch report: {html.escape(self.cfg.name)}</title>", f"<style>{_STYLE}</style>", "</head>",
            "<body>", f"<h1>mpsearch study <code>{html.escape(self.cfg.name)}</code></h1>",
            f'<p class="meta">Study folder {html.escape(str(self.folder.resolve()))}; report written {created}.</p>',
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
        rows = [(k, v) for k, v in _flatten(metrics).items() if k != "config_hash"]
        return ("<p>The float model every trial fine-tunes from (baseline/metrics.json).</p>"
                + _key_value_table(rows, ("metric", "value")))

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
        from mpsearch.search.plot import plot_front

        table = self.table
        summary = table.summary()
        counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
        text = (f"<p>{len(table.front)} of {len(table.frame)} distinct complete trials on the front ({counts}); "
                f"objectives {', '.join(table.objectives)} (all minimised). Hypervolume "
                f"{table.hypervolume:.4g} against the reference point {html.escape(table.reference.describe())}."
                "</p>")
        if table.duplicates:
            repeats = "; ".join(f"trial {k} by {', '.join(map(str, v))}" for k, v in sorted(table.duplicates.items()))
            text += f"<p>Trials repeating an earlier point, shown once: {html.escape(repeats)}.</p>"
        shown = table.frame.copy()
        shown["on_front"] = ["*" if v else "" for v in shown["on_front"]]
        # the star next to the trial number, where the eye starts, not past a dozen columns
        shown = shown[["trial", "on_front", *(c for c in shown.columns if c not in ("trial", "on_front"))]]
        return (text + _image(_png(lambda p: plot_front(table, p)), "Pareto front")
                + "<p>Every distinct complete trial (* on the front):</p>" + _frame_table(shown))

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

                metrics = [(k, row[k]) for k in METRIC_COLUMNS if k in row]
                parts.append(_key_value_table(metrics, ("metric", "value")))
            parts.append(_frame_table(policy_frame(self.knee_policy)))
        trained = sorted(self.folder.glob("trained/*/metrics.json"))
        if trained:
            columns = {p.parent.name: _flatten(read_json(p)) for p in trained}
            keys = list(dict.fromkeys(k for metrics in columns.values() for k in metrics))
            rows = [[k, *(columns[name].get(k) for name in columns)] for k in keys]
            parts.append("<h3>Trained with a policy (trained/*/metrics.json)</h3>")
            parts.append(_rows_table(rows, ("metric", *columns)))
        else:
            parts.append("<p>No policy trained yet (`mpsearch train STUDY.yaml --policy P.json` writes "
                         "trained/&lt;name&gt;/).</p>")
        return "\n".join(parts)

    def latency_section(self) -> str:
        from mpsearch.search.front_files import KNEE_POLICY

        if self.knee_policy is None:
            return _note(f"No {KNEE_POLICY}, so no policy to break down.")
        from mpsearch.hardware.latency import LatencyReport
        from mpsearch.study import Study

        study = Study(self.cfg, progress=False)
        try:
            report: LatencyReport = study.latency_model()(study.sites(), self.knee_policy)
        except MpsearchError as exc:
            return _note(f"The knee policy does not fit the study's model or profile: {exc}")
        frame = report.to_frame()
        total_us = report.latency_ms * 1e3
        frame["share"] = [f"{t / total_us:.1%}" if total_us else "-" for t in frame["time_us"]]
        where = "on chip" if report.onchip else "off chip (weights re-read every step)"
        summary = (f"<p>Profile {html.escape(report.profile)}: {report.latency_ms:.4g} ms per utterance, weights "
                   f"{report.memory_bytes} bytes ({where}), average weight bits {report.avg_weight_bits:.2f}. "
                   "Each site's time is the roofline bound of its compute, weight reads and activation traffic.</p>")
        return (summary + _image(_png(lambda p: plot_latency(report, p)), "latency per site")
                + _frame_table(frame.drop(columns=["onchip"])))

    def _trial_of(self, policy: Policy) -> int | None:
        if self.table is None:
            return None
        front_first = [*self.table.front_numbers(), *(int(n) for n in self.table.frame["trial"])]
        for number in dict.fromkeys(front_first):
            if self.table.trials[number].user_attrs.get("policy") and self.table.policy(number) == policy:
                return number
        return None


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


def plot_latency(report, path: str | Path) -> None:
    """Horizontal bars of each site's modelled time, coloured by what bounds it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from mpsearch.artifacts import atomic_path

    rows = report.rows
    fig = Figure(figsize=(7.5, 1.5 + 0.3 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    colours = {bound: palette[i % len(palette)] for i, bound in enumerate(dict.fromkeys(r.bound for r in rows))}
    ax.barh(range(len(rows)), [r.time_us for r in rows], color=[colours[r.bound] for r in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.name} ({r.weight_bits}b)" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("modelled time per utterance (us)")
    ax.set_title(f"{report.profile}: {report.latency_ms:.4g} ms in all", fontsize=9)
    handles = [Patch(color=colour, label=f"{bound}-bound") for bound, colour in colours.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(True, axis="x", linewidth=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def render_report(cfg: StudyConfig) -> str:
    """The study's report as one HTML page (figures embedded)."""
    return StudyReport(cfg).render()


def write_report(cfg: StudyConfig, path: str | Path | None = None) -> Path:
    """Write the report (default: report.html in the study folder), atomically; returns its path."""
    path = Path(path) if path else cfg.study_dir / REPORT_FILE
    write_text(path, render_report(cfg))
    log.info("wrote %s", path)
    return path


# --- HTML pieces ------------------------------------------------------------------------------------------
def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _png(draw: Callable[[Path], None]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _cell(value: Any) -> str:
    from mpsearch.search.pareto import format_value

    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_value(float(value) if isinstance(value, float) else value)


def _frame_table(frame: pd.DataFrame) -> str:
    table = frame.to_html(index=False, escape=True, na_rep="-", border=0, classes="data",
                          formatters={c: _cell for c in frame.columns})
    return f'<div class="wide">{table}</div>'


def _rows_table(rows: list[list[Any]], headers: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _key_value_table(pairs: list[tuple[str, Any]], headers: tuple[str, str]) -> str:
    return _rows_table([list(p) for p in pairs], headers)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists (training history) are left out of the tables."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat
