"""Search efficiency: trials the warm-started NSGA-II study needs to reach the hypervolume random search
reaches after a larger fixed budget, per seed, in one run.

Both searchers run the study's real trials (its float baseline, sensitivity report and search space,
reused from the study folder) through the Optuna backend into scratch storages. A trial is
deterministic for a fixed thread count, so each distinct point is trained once and its metrics are
reused by every later run that proposes it (kept in --cache); the CPU time reported is what the
trials would have cost without that reuse (the sum of each trial's own seconds).

  random:   RandomSampler(seed), no warm start, --budget trials.
  nsga2:    NSGAIISampler(seed), warm-started with the uniform-precision and ILP policies, up to
            --budget trials; trials (and CPU seconds) until its hypervolume reaches random's final one.

The hypervolume uses one reference point for every run: WER 1.0, latency 1.1 x uniform 8-bit.

    python analysis/bench_search.py --study studies/quickstart.yaml --budget 12 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from mpsearch.config import StudyConfig
from mpsearch.search.objective import TrialRunner
from mpsearch.search.optuna_backend import run_optuna
from mpsearch.search.pareto import hypervolume, non_dominated
from mpsearch.search.warm_start import ilp_starts, uniform_starts
from mpsearch.study import Study

RESULTS = Path(__file__).resolve().parent / "results"


class CachedTrials:
    """The study's trial function, evaluated once per distinct policy and remembered on disk."""

    def __init__(self, runner: TrialRunner, path: Path):
        self.runner, self.path = runner, path
        self.cache = json.loads(path.read_text()) if path.is_file() else {}
        self.trained = 0

    def __call__(self, policy) -> dict:
        key = json.dumps(policy.to_dict()["rules"], sort_keys=True)
        if key not in self.cache:
            self.cache[key] = self.runner.run(policy)
            self.trained += 1
            self.path.write_text(json.dumps(self.cache))
        return dict(self.cache[key])


def hypervolume_curve(optuna_study, objectives, reference) -> tuple[list[float], list[float]]:
    """Hypervolume of the non-dominated set and cumulative trial seconds after each complete trial."""
    from optuna.trial import TrialState

    done = sorted(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    points, curve, seconds, total = [], [], [], 0.0
    for trial in done:
        points.append(trial.values)
        total += float(trial.user_attrs["metrics"].get("seconds", 0.0))
        front = np.array(points)[non_dominated(np.array(points))]
        curve.append(hypervolume(front, reference))
        seconds.append(total)
    return curve, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--budget", type=int, default=12, help="random search's trials (NSGA-II's most)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", default=None, help="JSON of evaluated points (default: in the study folder)")
    parser.add_argument("--out", default=str(RESULTS / "bench_search.json"))
    args = parser.parse_args(argv)
    cfg = StudyConfig.from_yaml(args.study)
    study = Study(cfg, progress=False)
    study.baseline()
    space = study.search_space()
    runner = study.trial_runner()
    trials = CachedTrials(runner, Path(args.cache) if args.cache else cfg.study_dir / "bench_search_cache.json")
    objectives = list(cfg.search.objectives)
    uniform8 = space.to_policy(space.uniform_params(8))
    latency8 = runner.hardware_metrics(uniform8)["latency_ms"]
    reference = [1.0 if o in ("wer", "cer") else 1.1 * latency8 for o in objectives]
    starts = uniform_starts(space) + ilp_starts(study, space, cfg.search.warm_start.ilp)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(tmp)  # only the scratch storages live here; trials use the study's own files
        for seed in args.seeds:
            curves = {}
            for kind, warm in (("random", []), ("nsga2", starts)):
                run_cfg = cfg.model_copy(update={
                    "name": f"{kind}-{seed}", "output_dir": str(folder / f"{kind}-{seed}"),
                    "search": cfg.search.model_copy(update={"sampler": kind, "seed": seed, "trials": args.budget})})
                stored = run_optuna(run_cfg, space, warm, trials, trials=args.budget, progress=False)
                curves[kind] = hypervolume_curve(stored, objectives, reference)
            target = curves["random"][0][-1]
            reached = next((i for i, v in enumerate(curves["nsga2"][0]) if v >= target - 1e-12), None)
            row = {"seed": seed, "random_trials": args.budget, "random_hypervolume": round(target, 4),
                   "random_cpu_seconds": round(curves["random"][1][-1], 1),
                   "nsga2_hypervolume_curve": [round(v, 4) for v in curves["nsga2"][0]],
                   "random_hypervolume_curve": [round(v, 4) for v in curves["random"][0]],
                   "nsga2_trials_to_reach": None if reached is None else reached + 1,
                   "nsga2_cpu_seconds_to_reach": None if reached is None else round(curves["nsga2"][1][reached], 1)}
            rows.append(row)
            print(f"seed {seed}: random reaches {target:.4f} in {args.budget} trials; warm-started NSGA-II "
                  + (f"in {row['nsga2_trials_to_reach']} ({args.budget / row['nsga2_trials_to_reach']:.2f}x fewer)"
                     if reached is not None else f"not within {args.budget} (best {max(curves['nsga2'][0]):.4f})"))
    reached = [r for r in rows if r["nsga2_trials_to_reach"]]
    summary = {
        "study": args.study, "budget": args.budget, "seeds": args.seeds, "reference_point": reference,
        "points_trained_this_run": trials.trained, "rows": rows,
        "trials_ratio_mean": round(float(np.mean([args.budget / r["nsga2_trials_to_reach"] for r in reached])), 3)
        if reached else None,
        "cpu_ratio_mean": round(float(np.mean([r["random_cpu_seconds"] / r["nsga2_cpu_seconds_to_reach"]
                                               for r in reached])), 3) if reached else None,
    }
    print(f"random trials / NSGA-II trials to the same hypervolume, mean over {len(reached)} of "
          f"{len(rows)} seeds: {summary['trials_ratio_mean']}x (CPU time {summary['cpu_ratio_mean']}x)")
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
