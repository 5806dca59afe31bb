"""The contract every search backend must pass: the trial record (search/record.py) as the front reads it.

`tests/search/test_backend_contract.py` runs each check in CHECKS over every backend in BACKENDS, as
Optuna runs its own sampler and storage suites over each implementation. A check takes a `Backend`
(how to run a search on it) and a fresh folder; it searches a 4-point space of a tiny RNN-T on real
SQLite storage with `ToyEvaluation`, a picklable objective that scores a policy from its bit widths
alone (no training) and logs every evaluation to a file, so that a backend running trials in other
processes (Ray) can be held to "no point evaluated twice" too.

The checks: N distinct complete points for a request of N, each with its metrics, policy, origin and
keys; a re-proposed point answered from its stored trial without evaluating it; a failing point
recorded FAIL with its reason while the search goes on; the trial of a killed search process failed as
interrupted and its point run again with its origin; a changed float baseline scored anew; and the
records readable by the front and export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mpsearch.errors import TrialError

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig
    from mpsearch.quant import Policy
    from mpsearch.search.space import SearchSpace
    from mpsearch.search.warm_start import WarmStart

OBJECTIVES = ("wer", "latency_ms")
TINY_MODEL = {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 12, "enc_layers": 1, "pred_embed": 6,
                                         "pred_hidden": 12, "joint_dim": 10, "dropout": 0.0}}
TINY_SPACE = {"groups": {"encoder": {"sites": ["frontend.*", "encoder.*"], "weight_bits": [4, 8]},
                         "rest": {"sites": ["predictor.*", "joiner.*"], "weight_bits": [4, 8]}}}
FAILURE = "the toy loss became nan"


@dataclass(frozen=True)
class ToyEvaluation:
    """Scores a policy from its weight bits (more 8-bit sites: lower WER, higher latency), records the
    study folder's baseline key as the TrialRunner does, appends the point to `log`, and raises
    TrialError for a policy whose every site is at `fail_bits`."""

    study_dir: str
    log: str
    fail_bits: int | None = None

    def __call__(self, policy: Policy) -> dict[str, Any]:
        from mpsearch.search.record import folder_baseline

        bits = sorted(policy.resolve(name).weight_bits for name in policy.site_names)
        with open(self.log, "a") as file:
            file.write(json.dumps(bits) + "\n")
        if self.fail_bits is not None and set(bits) == {self.fail_bits}:
            raise TrialError(FAILURE)
        eights = sum(b == 8 for b in bits) / len(bits)
        metrics: dict[str, Any] = {"wer": round(0.5 - 0.3 * eights, 6), "latency_ms": round(1.0 + 2.0 * eights, 6),
                                   "avg_weight_bits": sum(bits) / len(bits)}
        baseline = folder_baseline(self.study_dir)
        if baseline:
            metrics["baseline"] = baseline
        return metrics

    def evaluated(self) -> Counter:
        """How often each point (its sorted bit widths) was evaluated."""
        path = Path(self.log)
        lines = path.read_text().splitlines() if path.is_file() else []
        return Counter(tuple(json.loads(line)) for line in lines)


Run = Callable[["StudyConfig", "SearchSpace", "list[WarmStart]", ToyEvaluation, int], "optuna.Study"]


@dataclass(frozen=True)
class Backend:
    """A backend as the contract drives it: `run(cfg, space, starts, evaluate, trials)` searches until
    the study holds `trials` distinct complete points and returns the Optuna study."""

    name: str
    run: Run


def _run_optuna(cfg, space, starts, evaluate, trials):
    from mpsearch.search.optuna_backend import run_optuna

    return run_optuna(cfg, space, starts, evaluate, trials=trials, workers=1, progress=False)


def _run_ray(cfg, space, starts, evaluate, trials):
    from mpsearch.search.ray_backend import run_ray

    return run_ray(cfg, space, starts, trials=trials, workers=2, progress=False, evaluate=evaluate)


BACKENDS = {"optuna": Backend("optuna", _run_optuna), "ray": Backend("ray", _run_ray)}


# --- the toy study ----------------------------------------------------------------------------------------
@dataclass
class ToyStudy:
    cfg: StudyConfig
    space: SearchSpace
    evaluate: ToyEvaluation

    def set_baseline(self, key: str) -> None:
        """Make `key` the study folder's float baseline, as `Study.baseline()` writes it."""
        folder = self.cfg.study_dir / "baseline"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"config_hash": key}))

    def stored(self) -> optuna.Study:
        from mpsearch.search.storage import load_trials_study

        return load_trials_study(self.cfg)


def toy_study(folder: Path, fail_bits: int | None = None, **search: Any) -> ToyStudy:
    """The 4-point study in `folder` (random sampler, no ILP), searched with ToyEvaluation."""
    from mpsearch.config import StudyConfig
    from mpsearch.study import Study

    folder = Path(folder).resolve()
    (folder / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    cfg = StudyConfig.from_dict({"name": "contract", "output_dir": str(folder / "study"), "model": TINY_MODEL,
                                 "search": {"space": str(folder / "space.yaml"), "sampler": "random",
                                            "objectives": list(OBJECTIVES), "warm_start": {"ilp": 0}, **search}},
                                source="backend contract")
    space = Study(cfg, progress=False).search_space()
    return ToyStudy(cfg, space, ToyEvaluation(str(cfg.study_dir), str(folder / "evaluated.jsonl"), fail_bits))


def _point(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


def _complete(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _uniform(space: SearchSpace) -> list[WarmStart]:
    from mpsearch.search.warm_start import uniform_starts

    return uniform_starts(space)


# --- the checks ---------------------------------------------------------------------------------------------
def check_requested_distinct_points(backend: Backend, folder: Path) -> None:
    """A request for N gives N distinct complete points (warm starts first), each carrying its metrics,
    policy, origin and baseline key, with values equal to its metrics' objectives; asking again for the
    same N evaluates nothing."""
    toy = toy_study(folder)
    toy.set_baseline("base-1")
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 3)
    scored = [t for t in _complete(study) if "copied_from" not in t.user_attrs]
    assert len(scored) == len({_point(t) for t in scored}) == 3, [t.params for t in scored]
    assert {"uniform-8", "uniform-4"} <= {t.user_attrs["origin"] for t in scored}
    for trial in scored:
        metrics = trial.user_attrs["metrics"]
        assert list(trial.values) == [metrics[o] for o in OBJECTIVES]
        assert trial.user_attrs["policy"] == toy.space.to_policy(trial.params).to_dict()
        assert metrics["baseline"] == trial.user_attrs["baseline"] == "base-1"
    assert sum(toy.evaluate.evaluated().values()) == 3
    backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 3)
    assert sum(toy.evaluate.evaluated().values()) == 3


def check_re_proposed_point_answered_from_the_record(backend: Backend, folder: Path) -> None:
    """A point proposed again (here: enqueued again by hand) is answered from its stored trial: the
    same values and metrics, `copied_from` naming it, no evaluation, and it does not count."""
    toy = toy_study(folder)
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 2)
    first = next(t for t in _complete(study) if t.user_attrs["origin"] == "uniform-8")
    study.enqueue_trial(dict(first.params), user_attrs={"origin": "again"})
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 3)
    again = next(t for t in _complete(study) if t.user_attrs["origin"] == "again")
    assert again.user_attrs["copied_from"] == first.number
    assert again.values == first.values and again.user_attrs["metrics"] == first.user_attrs["metrics"]
    evaluated = toy.evaluate.evaluated()
    assert max(evaluated.values()) == 1 and sum(evaluated.values()) == 3, evaluated
    assert len({_point(t) for t in _complete(study)}) == 3


def check_failing_trial_recorded_with_its_reason(backend: Backend, folder: Path) -> None:
    """A point whose evaluation raises TrialError is FAIL with the error as `fail_reason`; the other
    points still complete and the search ends (the retry budget) instead of looping."""
    from optuna.trial import TrialState

    from mpsearch.search.storage import fail_reason

    toy = toy_study(folder, fail_bits=4)
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 4)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert failed and all(fail_reason(t) == FAILURE for t in failed)
    assert any(t.user_attrs.get("origin") == "uniform-4" for t in failed)
    complete = {_point(t) for t in _complete(study)}
    assert len(complete) >= 2 and _point(failed[0]) not in complete
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


def _dead_run() -> dict:
    """The identity of a search process of this machine that has exited."""
    from mpsearch.search.runs import this_run

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return {**this_run(), "pid": int(done.stdout), "start": -1}


def check_killed_run_resumed(backend: Backend, folder: Path) -> None:
    """A trial left RUNNING by a search process that died is failed as interrupted when the search runs
    again, and its point runs again with its origin; the finished trials are kept as they were."""
    from optuna.trial import TrialState

    from mpsearch.search.optuna_backend import open_record
    from mpsearch.search.runs import INTERRUPTED, RUN_ATTR

    toy = toy_study(folder)
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space)[:1], toy.evaluate, 1)
    finished = {t.number: t.values for t in study.trials}
    record = open_record(toy.cfg, toy.space, heartbeat=False)
    killed_point = toy.space.uniform_params(4)
    record.study.enqueue_trial(killed_point, user_attrs={"origin": "uniform-4"})
    killed = record.study.ask()
    record.begin(killed)
    record.storage.set_trial_system_attr(record.trial_id(killed.number), RUN_ATTR, _dead_run())

    study = backend.run(toy.cfg, toy.space, _uniform(toy.space)[:1], toy.evaluate, 3)
    trials = {t.number: t for t in study.trials}
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs["fail_reason"] == INTERRUPTED
    assert any(t.params == killed_point and t.user_attrs["origin"] == "uniform-4" and t.number > killed.number
               for t in _complete(study))
    assert all(trials[n].values == values for n, values in finished.items())
    assert len({_point(t) for t in _complete(study)}) == 3
    assert max(toy.evaluate.evaluated().values()) == 1


def check_new_baseline_scored_anew(backend: Backend, folder: Path) -> None:
    """After the float baseline changes, the same request scores its points again (warm starts
    included) and never answers them from the old baseline's trials."""
    toy = toy_study(folder)
    toy.set_baseline("base-1")
    backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 2)
    toy.set_baseline("base-2")
    study = backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 2)
    on_new = [t for t in _complete(study) if t.user_attrs["metrics"]["baseline"] == "base-2"]
    assert sorted(t.user_attrs["origin"] for t in on_new) == ["uniform-4", "uniform-8"]
    assert not any("copied_from" in t.user_attrs for t in on_new)
    assert sum(toy.evaluate.evaluated().values()) == 4


def check_records_readable_by_the_front(backend: Backend, folder: Path) -> None:
    """The front, export and the knee read the stored trials: one row per distinct point, each row's
    policy loadable, the uniform points among them."""
    from mpsearch.search.pareto import load_front_table
    from mpsearch.search.pick import pick_trial

    toy = toy_study(folder)
    toy.set_baseline("base-1")
    backend.run(toy.cfg, toy.space, _uniform(toy.space), toy.evaluate, 4)
    table = load_front_table(toy.cfg)
    assert len(table.frame) == 4 and not table.older_baseline
    assert {"uniform-8", "uniform-4"} <= set(table.frame["origin"])
    for number in table.frame["trial"]:
        assert table.policy(int(number)) == toy.space.to_policy(table.trials[int(number)].params)
    assert pick_trial(table, pick="knee").number in table.front_numbers()


CHECKS: Sequence[Callable[[Backend, Path], None]] = (
    check_requested_distinct_points,
    check_re_proposed_point_answered_from_the_record,
    check_failing_trial_recorded_with_its_reason,
    check_killed_run_resumed,
    check_new_baseline_scored_anew,
    check_records_readable_by_the_front,
)
