"""A one-shot study (`search.trial_mode: oneshot`): the shared weights are a stage of their own that
survives a kill, trials score policies on them with no fine-tune, the front's policies carry their
confirmed fine-tuned scores, and one-shot trials never mix with fine-tuned ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import torch

from mpsearch.config import StudyConfig
from mpsearch.search.pareto import load_front_table
from mpsearch.study import Study

ONESHOT = {"trial_mode": "oneshot",
           "oneshot": {"train": {"max_steps": 4, "warmup_steps": 0, "threads": 1, "checkpoint_every": 2}}}


def _trials(cfg):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{cfg.study_dir}/optuna.db").trials


def test_oneshot_trials_skip_the_finetune_and_the_front_carries_confirmed_scores(make_study):
    cfg = StudyConfig.from_yaml(make_study(trials=3, **ONESHOT))
    result = Study(cfg, progress=False).run()
    shared = torch.load(cfg.study_dir / "oneshot" / "shared.pt", weights_only=True)
    assert shared["steps"] == 4
    complete = [t for t in _trials(cfg) if t.state.name == "COMPLETE"]
    for trial in complete:
        metrics = trial.user_attrs["metrics"]
        assert metrics["trial_mode"] == "oneshot" and "finetune" not in metrics and "test_wer" not in metrics
        assert "+oneshot-" in metrics["baseline"]
    front = result.front.frame[result.front.frame["on_front"]]
    assert len(front) and front["confirmed_wer"].notna().all() and front["confirmed_test_wer"].notna().all()
    confirmed = optuna.load_study(study_name="tiny", storage=f"sqlite:///{cfg.study_dir}/optuna.db").user_attrs[
        "confirmed"]
    (scores,) = confirmed.values()
    assert all(s["finetune"]["steps"] == 1 for s in scores.values())
    assert "confirmed_wer" in (cfg.study_dir / "front.csv").read_text().splitlines()[0]

    # The same study searched again by fine-tuned trials scores every point anew: no one-shot trial
    # answers for a fine-tuned one, and the front holds only the fine-tuned trials.
    finetune_cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"trial_mode": "finetune"})})
    Study(finetune_cfg, progress=False).run()
    table = load_front_table(finetune_cfg)
    rows = [t for t in _trials(cfg) if t.number in set(table.frame["trial"])]
    assert rows and all("finetune" in t.user_attrs["metrics"] for t in rows)
    assert "confirmed_wer" not in table.frame


def test_a_kill_during_the_shared_training_resumes_from_its_checkpoint(tmp_path, make_study):
    steps = {"max_steps": 40, "warmup_steps": 0, "threads": 1, "checkpoint_every": 2}
    study_yaml = make_study(trials=2, trial_mode="oneshot", oneshot={"train": steps})
    checkpoint = tmp_path / "study" / "oneshot" / "checkpoint.pt"
    log_path = tmp_path / "search.log"
    command = [sys.executable, "-m", "mpsearch.cli.main", "search", str(study_yaml), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 150
        try:
            while not checkpoint.exists() or torch.load(checkpoint, weights_only=False)["step"] < 4:
                assert process.poll() is None, f"the search ended before it was killed:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no shared-training checkpoint in time:\n{log_path.read_text()}"
                time.sleep(0.2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    saved = torch.load(checkpoint, weights_only=False)["step"]
    assert 4 <= saved < 40 and not (tmp_path / "study" / "oneshot" / "shared.pt").exists()
    with open(log_path, "a") as log:
        assert subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=300).returncode == 0, \
            log_path.read_text()
    text = log_path.read_text()
    assert f"resumed training from {checkpoint} at step" in text, text
    resumed_at = int(text.split(f"resumed training from {checkpoint} at step ")[1].split()[0])
    assert resumed_at >= saved
    assert torch.load(tmp_path / "study" / "oneshot" / "shared.pt", weights_only=True)["steps"] == 40


def test_by_default_the_shared_weights_get_the_training_of_one_finetuned_trial(make_study):
    from mpsearch.search.record import oneshot_key

    cfg = StudyConfig.from_yaml(make_study(trials=2, trial_mode="oneshot"))
    finetune = cfg.search.finetune
    train = cfg.search.shared_training
    assert (train.max_steps, train.lr, train.augment) == (finetune.max_steps, finetune.lr, finetune.augment)
    assert train.checkpoint_every == max(1, finetune.max_steps // 4)
    Study(cfg, progress=False).shared_weights()
    shared = torch.load(cfg.study_dir / "oneshot" / "shared.pt", weights_only=True)
    assert shared["steps"] == finetune.max_steps
    # A longer fine-tune is another shared training: the weights are keyed by what trained them.
    longer = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"finetune": finetune.model_copy(update={"max_steps": finetune.max_steps + 1})})})
    assert oneshot_key(longer, "b") != oneshot_key(cfg, "b")
    assert longer.search.shared_training.max_steps == finetune.max_steps + 1
