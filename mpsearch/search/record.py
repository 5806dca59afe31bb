"""What each stored trial was scored against, and which trials count for the study as it is now.

A trial's numbers hold for the float baseline it fine-tuned from (`Study.baseline_key`) and, for the ILP
warm starts, the sensitivity report they came from. Every trial records both keys (user attrs
"baseline" and "sensitivity" from its start, and the same in its metrics). When the baseline changes (a
new checkpoint, other training settings, an edited manifest) the trials of the old one stay stored as
history but take no part: the front, export and the report leave them out and say how many, a point
the sampler proposes again is never answered from them, the warm starts are enqueued again, and the
count of finished points that ends a search counts only the current baseline's trials.

The current baseline is the one in the study folder (`baseline/metrics.json`'s `config_hash`, which
`Study.baseline()` writes before any trial runs); without that file, the one the study's latest search
scored on (the study's "baseline" user attr); without either, every trial counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig

BASELINE = "baseline"
SENSITIVITY = "sensitivity"
BASELINE_METRICS = Path("baseline") / "metrics.json"
SENSITIVITY_REPORT = "sensitivity.json"  # sensitivity/stage.py's REPORT_FILE, read here without torch


@dataclass(frozen=True)
class Provenance:
    """The keys of the float baseline and the sensitivity report a search's trials are scored with."""

    baseline: str | None = None
    sensitivity: str | None = None

    @classmethod
    def of_study(cls, cfg: StudyConfig) -> Provenance:
        """The keys of the artefacts in the study folder (read only). The sensitivity report counts only
        when the warm starts use it (ILP candidates); otherwise it may be a stale one."""
        folder = Path(cfg.study_dir)
        sensitivity = _json_field(folder / SENSITIVITY_REPORT, "key") if cfg.search.warm_start.ilp > 0 else None
        return cls(folder_baseline(folder), sensitivity)

    def items(self) -> dict[str, str]:
        return {k: v for k, v in ((BASELINE, self.baseline), (SENSITIVITY, self.sensitivity)) if v}

    def stamp(self, trial: optuna.Trial) -> None:
        """Record the keys on a trial as it starts, so a RUNNING or failed trial says what it was for."""
        for key, value in self.items().items():
            trial.set_user_attr(key, value)

    def into(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """`metrics` with the keys added where the evaluation did not record them itself."""
        return {**self.items(), **metrics}


def folder_baseline(folder: str | Path) -> str | None:
    """The key of the float baseline in a study folder; None when it has none (yet)."""
    return _json_field(Path(folder) / BASELINE_METRICS, "config_hash")


def _json_field(path: Path, name: str) -> str | None:
    try:
        value = json.loads(path.read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def trial_baseline(trial: optuna.trial.FrozenTrial) -> str | None:
    """The baseline a trial was scored on: its metrics' record, else the key stamped when it started."""
    metrics = trial.user_attrs.get("metrics")
    recorded = metrics.get(BASELINE) if isinstance(metrics, dict) else None
    return recorded or trial.user_attrs.get(BASELINE)


def study_baseline(study: optuna.Study) -> str | None:
    """The baseline the study's latest search scored on."""
    return study.user_attrs.get(BASELINE)


def current_baseline(cfg: StudyConfig, study: optuna.Study) -> str | None:
    """The study's current baseline (module docstring): the study folder's, else the latest search's."""
    return folder_baseline(cfg.study_dir) or study_baseline(study)


def is_current(trial: optuna.trial.FrozenTrial, baseline: str | None) -> bool:
    """Whether a trial belongs to the baseline `baseline` (None: every trial does). A trial still
    queued belongs to whichever baseline is current when it runs."""
    return baseline is None or trial.state.name == "WAITING" or trial_baseline(trial) == baseline


def split_by_baseline(trials: Iterable[optuna.trial.FrozenTrial], baseline: str | None,
                      ) -> tuple[list[optuna.trial.FrozenTrial], list[optuna.trial.FrozenTrial]]:
    """(the trials of `baseline`, the others)."""
    current, older = [], []
    for trial in trials:
        (current if is_current(trial, baseline) else older).append(trial)
    return current, older


def point_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def distinct_complete_count(study: optuna.Study, baseline: str | None = None) -> int:
    """Distinct points among the COMPLETE trials of `baseline` (default: the study's latest search's):
    what a requested trial count counts."""
    from optuna.trial import TrialState

    baseline = baseline or study_baseline(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return len({point_key(t.params) for t in complete if is_current(t, baseline)})


def older_baseline_note(count: int) -> str:
    """The sentence every reader of the front prints when trials of another baseline were left out."""
    if not count:
        return ""
    trials = "1 trial" if count == 1 else f"{count} trials"
    return (f"{trials} of an older float baseline {'is' if count == 1 else 'are'} left out (the baseline "
            "changed since they were scored); `mpsearch search` scores the study's points on the current one")
