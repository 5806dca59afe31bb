"""Trials per minute with 1 and with 2 concurrent trials, through the Ray or the Optuna backend, on this machine.

Both runs search the same study (its float baseline, features and sensitivity report are reused
from the study folder, trained first if missing) into two fresh scratch studies, with the same
warm-start trials (the uniform-precision policies, so both evaluate the same points), one after the
other in this process. Throughput is counted from the first trial's start to the last trial's end in
the trial storage, so Ray's start-up is not in it. Ray gives each trial cores // workers torch threads;
the Optuna backend runs `workers` trials as threads of one process, sharing the cores its thread policy
finds free (mpsearch.runtime).

    python analysis/bench_ray.py --study studies/quickstart.yaml --trials 6 [--backend optuna]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

from mpsearch.config import StudyConfig
from mpsearch.study import Study

RESULTS = Path(__file__).resolve().parent / "results"
REUSED = ("baseline", "features", "tokenizer.json", "sensitivity.json")


def scratch_study(cfg: StudyConfig, folder: Path, workers: int, trials: int, backend: str = "ray") -> Study:
    search = cfg.search.model_copy(update={"backend": backend, "workers": workers, "trials": trials,
                                           "warm_start": cfg.search.warm_start.model_copy(update={"ilp": 0})})
    scratch = cfg.model_copy(update={"name": f"{cfg.name}-{backend}{workers}", "output_dir": str(folder),
                                     "search": search})
    folder.mkdir(parents=True)
    for name in REUSED:
        source = cfg.study_dir / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        elif source.is_file():
            shutil.copy2(source, folder / name)
    return Study(scratch, progress=False)


def throughput(optuna_study) -> dict:
    from optuna.trial import TrialState

    done = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    minutes = (end - start).total_seconds() / 60
    return {"trials": len(done), "minutes": round(minutes, 3), "trials_per_minute": round(len(done) / minutes, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--trials", type=int, default=6, help="complete trials per run (uniform warm starts first)")
    parser.add_argument("--backend", choices=("ray", "optuna"), default="ray")
    parser.add_argument("--out", help="default analysis/results/bench_<backend>_workers.json (bench_ray.json for Ray)")
    args = parser.parse_args(argv)
    out = args.out or str(RESULTS / ("bench_ray.json" if args.backend == "ray" else f"bench_{args.backend}_workers.json"))
    cfg = StudyConfig.from_yaml(args.study)
    Study(cfg, progress=False).baseline()  # both runs reuse it
    rows = {}
    with tempfile.TemporaryDirectory(prefix=f"bench_{args.backend}_") as tmp:
        for workers in (1, 2):
            study = scratch_study(cfg, Path(tmp) / f"{args.backend}{workers}", workers, args.trials, args.backend)
            rows[workers] = throughput(study.run("trials").trials)
            print(f"{workers} concurrent trial(s): {rows[workers]}")
    ratio = rows[2]["trials_per_minute"] / rows[1]["trials_per_minute"]
    print(f"2 concurrent / 1 concurrent trials per minute: {ratio:.2f}x")
    record = {"command": " ".join(["python", *sys.argv]), "study": args.study, "backend": args.backend,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "runs": rows, "ratio_2_over_1": round(ratio, 3)}
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
