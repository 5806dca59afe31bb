"""Ship a trained baseline: copy its checkpoint into mpsearch/pretrained/<name>.pt and write the model card
<name>.md beside it from what the checkpoint and its metrics.json record (recipe, command, corpus,
steps, wall time, dev/test WER and CER with 95% intervals, sha256).

    python analysis/model_card.py --study studies/rnnt_pretrain.yaml --name rnnt_quickstart \
        [--note "text added under 'How it was made'"]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mpsearch.config import StudyConfig
from mpsearch.training.checkpoint import file_sha256, load_checkpoint

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "mpsearch" / "pretrained"


def _rate(scores: dict, name: str) -> str:
    value = f"{100 * scores[name]:.1f}%"
    if name == "wer" and "wer_ci_low" in scores:
        value += f" [{100 * scores['wer_ci_low']:.1f}, {100 * scores['wer_ci_high']:.1f}]"
    return value


def card(name: str, study_path: Path, cfg: StudyConfig, metrics: dict, source: dict, sha256: str, size: int,
         note: str) -> str:
    minutes = source["train_seconds"] / 60
    dev, test = metrics["dev"], metrics["test"]
    lines = [
        f"# {name}: model card",
        "",
        f"The {cfg.model.name} model that `baseline: {{checkpoint: pretrained:{name}}}` loads "
        f"({metrics['parameters'] / 1e6:.2f} M parameters, {size / 2**20:.1f} MiB float32).",
        "",
        "| | WER [95% interval] | CER | utterances |",
        "|---|---|---|---|",
        f"| dev (training voices, held-out sentences) | {_rate(dev, 'wer')} | {_rate(dev, 'cer')} | "
        f"{dev.get('utterances', '-')} |",
        f"| test (four voices never trained on) | {_rate(test, 'wer')} | {_rate(test, 'cer')} | "
        f"{test.get('utterances', '-')} |",
        "",
        "Intervals: percentile bootstrap over utterances (2000 resamples, seed 0).",
        "",
        "## How it was made",
        "",
        f"    mpsearch train {study_path}",
        "",
        f"- recipe: `{study_path}` (below), config hash `{source['config_hash']}`",
        f"- corpus: built-in espeak-ng corpus, {cfg.data.voices} voice set, {cfg.data.utterances} utterances, "
        f"seed {cfg.data.seed}; manifest sha256: "
        + ", ".join(f"{k} `{v[:12]}`" for k, v in sorted(source.get("manifests", {}).items())),
        f"- training: {source['train_steps']} steps, seed {cfg.train.seed}, {minutes:.0f} min of wall time "
        f"({source.get('threads')} torch thread(s) at the end), final train loss {metrics.get('final_train_loss', 0):.3f}",
        f"- machine: {source.get('machine', '-')}; finished {source.get('date', '-')}; mpsearch "
        f"{source.get('mpsearch', '-')}, torch {source.get('torch', '-')}",
        f"- file: `mpsearch/pretrained/{name}.pt`, sha256 `{sha256}`",
    ]
    if note:
        lines += ["", note]
    history = metrics.get("history") or []
    if history:
        lines += ["", "Dev WER during training:", "", "| step | train loss | dev WER | dev CER |", "|---|---|---|---|"]
        lines += [f"| {h['step']} | {h['loss']:.2f} | {100 * h['wer']:.1f}% | {100 * h['cer']:.1f}% |" for h in history]
    lines += ["", f"## `{study_path}`", "", "```yaml", study_path.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    cfg = StudyConfig.from_yaml(args.study)
    folder = cfg.study_dir / "baseline"
    metrics = json.loads((folder / "metrics.json").read_text())
    checkpoint = load_checkpoint(folder / "model.pt")
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    target = PACKAGE_DIR / f"{args.name}.pt"
    shutil.copyfile(folder / "model.pt", target)
    sha256 = file_sha256(target)
    text = card(args.name, args.study, cfg, metrics, checkpoint.source, sha256, target.stat().st_size, args.note)
    (PACKAGE_DIR / f"{args.name}.md").write_text(text)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB, sha256 {sha256[:16]}) and "
          f"{PACKAGE_DIR / (args.name + '.md')}")


if __name__ == "__main__":
    main()
