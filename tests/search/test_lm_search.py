"""A Transformer LM searched end to end: perplexity against latency, every trial under NNA emulation."""

import yaml
from optuna.trial import TrialState

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.search.storage import load_trials_study

LM_SPACE = {"groups": {
    "blocks": {"sites": "re:blocks\\..*", "weight_bits": [4, 8]},
    "embedding": {"sites": ["embed", "head"], "weight_bits": [4, 8]},
}}


def test_a_transformer_lm_study_searches_perplexity_under_nna_emulation(tmp_path, synth_corpus, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(LM_SPACE))
    study = {
        "name": "tiny_lm", "output_dir": str(tmp_path / "study"),
        "data": {"corpus": "manifest", **{s: str(synth_corpus.manifests[s]) for s in ("train", "dev", "test")}},
        "model": {"name": "transformer_lm", "params": {"d_model": 16, "n_layers": 1, "n_heads": 2}},
        "train": {"max_steps": 20, "warmup_steps": 0, "eval_every": 100, "threads": 1, "augment": False},
        "sensitivity": {"batches": 1, "min_probes": 2, "max_probes": 4, "bits": [4, 8]},
        "search": {"space": str(space), "objectives": ["perplexity", "latency_ms"], "trials": 3, "workers": 1,
                   "calibration_batches": 1, "warm_start": {"ilp": 1},
                   "finetune": {"max_steps": 2, "warmup_steps": 0, "threads": 1, "augment": False}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["search", str(path), "--no-progress"]) == 0
    trials = [t for t in load_trials_study(StudyConfig.from_yaml(path)).get_trials(states=(TrialState.COMPLETE,))
              if "copied_from" not in t.user_attrs]  # a point proposed again is answered, not trained
    assert len(trials) == 3
    by_origin = {t.user_attrs["origin"]: t for t in trials}
    assert {"uniform-8", "uniform-4"} <= set(by_origin)
    for trial in trials:
        metrics = trial.user_attrs["metrics"]
        assert trial.values == [metrics["perplexity"], metrics["latency_ms"]]
        assert 1.0 < metrics["perplexity"] < 60  # a trained LM under emulation, not a broken one
    assert by_origin["uniform-4"].values[1] < by_origin["uniform-8"].values[1]
    assert (tmp_path / "study" / "knee-policy.json").is_file()
    table = capsys.readouterr().out
    assert "test_perplexity" in table and "test_wer" not in table
