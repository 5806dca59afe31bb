"""`mpsearch search` and `mpsearch resume`: run or continue a study's trials."""

from __future__ import annotations

import argparse
import sys

_DESCRIPTION = (
    "Run the study's mixed-precision search: train the float baseline if missing, compute the sensitivity "
    "report and the ILP candidates, enqueue the uniform-precision policies (the reference every front must "
    "beat), then run trials until the study's storage holds the requested number of complete trials of "
    "distinct points (a point the sampler proposes again is answered from its stored trial and does not "
    "count). Each trial applies a policy from the search space under NNA emulation, fine-tunes it from the "
    "baseline and scores WER and modelled latency. Trials live in an Optuna RDB storage (SQLite in the study folder by "
    "default): re-running the same command after a crash continues where it stopped and never re-runs a "
    "finished trial.")


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments
    from mpsearch.search.engine import BACKENDS

    for name, help_text in (("search", "run a study's trials (continues a stored study)"),
                            ("resume", "continue a stored study after a crash (same as search)")):
        parser = subparsers.add_parser(
            name, help=help_text, description=_DESCRIPTION,
            epilog="examples:\n  mpsearch search studies/quickstart.yaml\n"
                   "  mpsearch search studies/rnnt_ray.yaml --backend ray --workers 2\n"
                   "  mpsearch search studies/rnnt_ray.yaml --address auto   (on a Ray cluster's head node)\n"
                   "It ends by writing the front (front.csv, front.png, front.json) and the knee's policy\n"
                   "(knee-policy.json) in the study folder; `mpsearch front` and `mpsearch export` read them again.",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        add_study_arguments(parser)
        parser.add_argument("--backend", choices=BACKENDS.names(), help="override search.backend (default optuna)")
        parser.add_argument("--trials", type=int, help="complete trials of distinct points wanted in total, warm "
                                                       "starts included, at most the space's size (default "
                                                       "search.trials)")
        parser.add_argument("--workers", type=workers_arg, help="trials run at once, or auto (default search.workers)")
        parser.add_argument("--address", help="Ray cluster address (ray backend); default a local Ray")
        parser.set_defaults(func=run, require_stored=name == "resume")


def workers_arg(text: str) -> int | str:
    """--workers: a positive count or auto."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or auto; got {text!r}")
    return int(text)


def run(args) -> int:
    from optuna.trial import TrialState

    from mpsearch.cli.common import open_study, study_config
    from mpsearch.cli.front import print_front
    from mpsearch.errors import ConfigError

    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {args.trials}.")
    cfg = study_config(args)
    if args.require_stored:
        from mpsearch.search.storage import load_trials_study

        load_trials_study(cfg)
    study = open_study(args, cfg)
    print(_plan(cfg, args), flush=True)
    result = study.run(backend=args.backend, trials=args.trials, workers=args.workers, address=args.address)
    trials_study = result.trials
    failed = trials_study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    repeats = [t for t in trials_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if "copied_from" in t.user_attrs or "duplicate_of" in t.user_attrs]
    print(f"{result.complete} complete trials of distinct points ({len(failed)} failed"
          f"{f', {len(repeats)} repeated points answered from stored trials' if repeats else ''}) "
          f"in study '{cfg.name}'")
    if result.front is None:
        reason = failed[-1].user_attrs.get("fail_reason", "see the log") if failed else "stopped early"
        print(f"error: only {result.complete} of {result.wanted} trials completed; last failure: {reason}",
              file=sys.stderr)
        return 1
    print_front(cfg, written_front=(result.front, result.front_files))
    print(f"knee of the front: trial {result.knee.number}, policy written to {result.knee_policy}")
    print(f"report:  mpsearch report {args.study}   (one HTML page of the front, policies, latency, sensitivity)")
    print(f"next:  mpsearch train {args.study} --policy {result.knee_policy}   "
          f"(or `mpsearch export` another trial)")
    return 0


def _plan(cfg, args) -> str:
    """What the search will do, stage by stage, and roughly how long its trials take."""
    search = cfg.search
    trials = args.trials or search.trials
    baseline = (f"evaluate {cfg.baseline.checkpoint}" if cfg.baseline.checkpoint
                else f"train the float baseline (up to {cfg.train.max_steps} steps"
                     f"{f' or {cfg.train.max_minutes:g} min' if cfg.train.max_minutes else ''})")
    scored = f"{search.eval_utterances} {search.eval_split}" if search.eval_utterances else f"all {search.eval_split}"
    sensitivity = (f"Hessian sensitivity ({cfg.sensitivity.batches} batch(es), up to "
                   f"{cfg.sensitivity.max_probes} HVPs each)")
    stages = [baseline, sensitivity,
              f"{search.warm_start.ilp} ILP candidate(s)" + (" + supernet sweep" if search.warm_start.supernet else "")]
    if search.trial_mode == "oneshot":
        stages += [f"one-shot shared weights ({search.shared_training.max_steps} steps)",
                   (f"{trials} one-shot trials on {args.backend or search.backend} (uniform-precision references "
                    f"first; each calibrates the shared weights under {search.emulation} emulation and scores "
                    f"{scored} utterances)"),
                   f"the front's policies confirmed by fine-tuned trials ({search.finetune.max_steps} steps each)"]
    else:
        stages.append(f"{trials} trials on {args.backend or search.backend} (uniform-precision references first; "
                      f"each fine-tunes {search.finetune.max_steps} steps under {search.emulation} emulation and "
                      f"scores {scored} and test utterances)")
    lines = [f"study '{cfg.name}' in {cfg.study_dir}: " + "; ".join(stages)]
    seconds = _stored_trial_seconds(cfg)
    if seconds:
        median = sorted(seconds)[len(seconds) // 2]
        left = max(0, trials - len(seconds))
        lines.append(f"finished stages and trials are reused: {len(seconds)} trial(s) stored, {left} to run at "
                     f"about {median:.0f} s each (the stored trials' median), about {left * median / 60:.0f} min")
    else:
        lines.append("finished stages and trials are reused; a trial takes seconds to minutes depending on the "
                     "model and the machine (the progress bar shows the rate)")
    return "\n".join(lines)


def _stored_trial_seconds(cfg) -> list[float]:
    """How long each complete trial already stored took; empty for a study not searched yet."""
    from mpsearch.errors import MpsearchError
    from mpsearch.search.storage import load_trials_study

    try:
        stored = load_trials_study(cfg)
    except MpsearchError:
        return []
    return [float(t.user_attrs["metrics"]["seconds"]) for t in stored.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and "copied_from" not in t.user_attrs
            and isinstance((t.user_attrs.get("metrics") or {}).get("seconds"), (int, float))]
