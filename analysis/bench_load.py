"""Training throughput of the quickstart RNN-T alone and beside another busy torch process, side by side.

Each measurement runs in a fresh process (so OpenMP starts anew) for `--seconds` of the training loop
(mpsearch.training.trainer.train) on a fixed batch of the quickstart's shape. Conditions:
  alone            2 threads (every core), nothing else running
  beside, fixed    2 threads, beside a 2-thread torch process (what every-core processes do)
  beside, policy   mpsearch's thread policy (runtime.apply_thread_policy, applied before torch loads, as
                   the CLI does), beside the same process
Prints steps/s and each ratio to `alone`; a fair share of 2 cores beside one other 2-thread job is 0.5x.
With --trial-study, the same three conditions time one whole trial of that study (its uniform 8-bit
policy: calibrate, `search.finetune`, dev and test scoring), the study's stages loaded from its folder
first (run its search once before).

    python analysis/bench_load.py [--seconds 40] [--trial-study studies/quickstart.yaml] [--out analysis/results/bench_load.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

LOAD = """
import torch, time
torch.set_num_threads(2)
a = torch.randn(256, 1024); b = torch.randn(1024, 256)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for _ in range(50):
        (a @ b).relu_()
"""


def _train_steps(threads: str, seconds: float, queue) -> None:
    from mpsearch.runtime import apply_thread_policy

    # The policy first, as the CLI applies it: before torch (and its OpenMP) loads.
    used = apply_thread_policy() if threads == "policy" else int(threads)
    import torch

    from mpsearch.config import ModelConfig, TrainConfig
    from mpsearch.models import build_model
    from mpsearch.training.tasks import FixedBatchTask
    from mpsearch.training.trainer import train

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="rnnt", params={"subsampling": "conv", "enc_hidden": 256, "enc_layers": 2,
                                                          "joint_dim": 160, "ctc_weight": 0.5}), vocab_size=29, n_mels=80)
    batch = (torch.randn(32, 240, 80), torch.full((32,), 240), torch.randint(2, 29, (32, 40)), torch.full((32,), 40))
    task = FixedBatchTask(model, batch)
    settings = {"lr": 1e-3, "warmup_steps": 0, "threads": used, "eval_every": 10**9, "checkpoint_every": 10**9}
    train(task, TrainConfig(max_steps=1, **settings), progress=False)  # warm-up
    # The step budget is out of reach: the time limit ends the run.
    result = train(task, TrainConfig(max_steps=10**9, max_minutes=seconds / 60, **settings), progress=False)
    queue.put({"threads": used, "passive": os.environ.get("OMP_WAIT_POLICY") == "PASSIVE",
               "steps_per_s": result.steps / result.seconds})


def _trial_seconds(threads: str, study_path: str, queue) -> None:
    from mpsearch.runtime import apply_thread_policy

    used = apply_thread_policy() if threads == "policy" else int(threads)
    import torch

    from mpsearch.config import StudyConfig
    from mpsearch.study import Study

    torch.set_num_threads(used)
    study = Study(StudyConfig.from_yaml(study_path), progress=False)
    runner = study.trial_runner("finetune")
    policy = study.search_space().to_policy(study.search_space().uniform_params(8))
    start = time.monotonic()
    runner.run(policy)
    queue.put({"threads": used, "passive": os.environ.get("OMP_WAIT_POLICY") == "PASSIVE",
               "trial_seconds": time.monotonic() - start})


def measure(threads: str, seconds: float, beside_load: bool, trial_study: str | None = None) -> dict:
    load = None
    if beside_load:
        # a trial's setup and run take minutes: the load outlasts them and is stopped when they end
        duration = seconds + 30 if trial_study is None else 3600
        load = subprocess.Popen([sys.executable, "-c", LOAD.format(seconds=duration)])
        time.sleep(2)  # let it reach full speed before the policy looks at the machine
    queue = mp.get_context("spawn").Queue()
    target, args = (_train_steps, (threads, seconds, queue)) if trial_study is None else \
        (_trial_seconds, (threads, trial_study, queue))
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    result = queue.get()
    proc.join()
    if load is not None:
        load.kill()
        load.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--trial-study", help="also time one trial of this study YAML in each condition")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    conditions = {"alone": ("2", False), "beside, fixed 2 threads": ("2", True),
                  "beside, thread policy": ("policy", True)}
    rows = {name: measure(threads, args.seconds, beside) for name, (threads, beside) in conditions.items()}
    base = rows["alone"]["steps_per_s"]
    for name, row in rows.items():
        row["ratio_to_alone"] = row["steps_per_s"] / base
        print(f"{name:<26} {row['threads']} thread(s){' (passive wait)' if row.get('passive') else ''}  "
              f"{row['steps_per_s']:.2f} steps/s  {row['ratio_to_alone']:.2f}x")
    trials = {}
    if args.trial_study:
        trials = {name: measure(threads, args.seconds, beside, args.trial_study)
                  for name, (threads, beside) in conditions.items()}
        base = trials["alone"]["trial_seconds"]
        for name, row in trials.items():
            row["throughput_to_alone"] = base / row["trial_seconds"]
            print(f"{name:<26} {row['threads']} thread(s){' (passive wait)' if row.get('passive') else ''}  "
                  f"trial {row['trial_seconds']:.1f} s  {row['throughput_to_alone']:.2f}x the trials per minute")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {mp.cpu_count()} cores",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows,
            "trials": trials}, indent=2) + "\n")


if __name__ == "__main__":
    main()
