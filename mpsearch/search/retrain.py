"""Training with a chosen Policy: the trial's recipe (calibrate, QAT fine-tune under emulation, score),
for as many steps as asked, with the model and its integer export kept in the study folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.artifacts import atomic_path, write_json
from mpsearch.quant import Policy

if TYPE_CHECKING:
    from mpsearch.study import Study

log = logging.getLogger(__name__)


def train_with_policy(study: Study, policy: Policy, name: str, steps: int | None = None) -> tuple[dict[str, Any], Path]:
    """Fine-tune the float baseline under `policy` for `steps` (default: a trial's `search.finetune`
    steps, so an exported trial reproduces its WER) and write `trained/<name>/` in the study folder:
    metrics.json, model.pt, the policy, and model.npz (integer export) under NNA emulation."""
    runner = study.trial_runner("finetune")  # a policy is trained, whatever mode searched it
    model = runner.quantized_model(policy)  # quant.apply checks the policy against the model's sites
    finetune = runner.finetune(model, steps, progress=study.progress)
    metrics = {**runner.hardware_metrics(policy), "finetune": finetune, **runner.evaluate(model),
               "eval_split": study.cfg.search.eval_split, "eval_utterances": study.cfg.search.eval_utterances,
               "emulation": study.cfg.search.emulation, "threads": torch.get_num_threads()}
    out = study.dir / "trained" / name
    out.mkdir(parents=True, exist_ok=True)
    policy.save(out / "policy.json")
    with atomic_path(out / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    if study.cfg.search.emulation == "nna":
        from mpsearch.quant.nna import export_int

        export_int(model, out / "model.npz")
        metrics["integer_export"] = str(out / "model.npz")
        from mpsearch.onnx import export_onnx_if_supported

        # beside it: model.{encoder,predictor,joiner}.onnx for an RNN-T, model.ctc.onnx for a Conformer CTC
        export_onnx_if_supported(out / "model.npz")
    write_json(out / "metrics.json", metrics)
    return metrics, out
