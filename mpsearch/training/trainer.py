"""The one training loop, for float baselines, QAT fine-tunes, policies trained for export and a user's own
model (through its task): AdamW, warm-up then cosine decay over the step or time budget (whichever runs
out first), gradient clipping, atomic checkpoints it resumes from."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from mpsearch.artifacts import atomic_path
from mpsearch.config import TrainConfig
from mpsearch.errors import DataError, TrialError

if TYPE_CHECKING:
    from mpsearch.training.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)


def _lr_factor(progress: float, warmup_fraction: float) -> float:
    if progress < warmup_fraction:
        return max(progress / warmup_fraction, 1e-3)
    rest = (progress - warmup_fraction) / max(1e-8, 1.0 - warmup_fraction)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, rest)))


@dataclass(frozen=True)
class TrainHooks:
    """What a quantisation method adds to training (`quant.methods.hooks.training_hooks` makes them):
    `extra_loss()` a regulariser (S8BQAT, ADMM), `after_step(step)` after each optimiser step (hard
    compressors, mask updates), `finish()` the end state once training stops, at whatever step."""

    extra_loss: Callable[[], torch.Tensor] | None = None
    after_step: Callable[[int], None] | None = None

    def finish(self) -> None:
        pass


def train(task: Task, cfg: TrainConfig, hooks: TrainHooks | None = None, *, checkpoint: Path | None = None,
          checkpoint_key: str | None = None, progress: bool = True,
          on_eval: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train `task.model` in place, then call `hooks.finish()`. With `checkpoint`, resume from it if
    present and save to it every `cfg.checkpoint_every` steps and at the end, so a kill loses at most that
    many steps. With `checkpoint_key` (a hash of what the training depends on), a checkpoint saved under
    another key, or one that cannot be read, is set aside with a warning naming it and training starts
    afresh. `hooks` (TrainHooks or the like) are the quantisation methods' part."""
    hooks = hooks or TrainHooks()
    extra_loss, after_step = hooks.extra_loss, hooks.after_step
    model = task.model
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, epoch, epoch_pos, elapsed_before, history = 0, 0, 0, 0.0, []
    state = _resumable_state(Path(checkpoint), checkpoint_key) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, epoch_pos = state["step"], state["epoch"], state["epoch_pos"]
        elapsed_before, history = state["elapsed"], state["history"]
        log.info("resumed training from %s at step %d", checkpoint, step)

    def save() -> None:
        if checkpoint is None:
            return
        with atomic_path(checkpoint) as tmp:
            torch.save({"key": checkpoint_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "epoch": epoch, "epoch_pos": epoch_pos, "elapsed": elapsed_before + time.monotonic() - start,
                        "history": history}, tmp)

    max_seconds = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    warmup = min(0.5, cfg.warmup_steps / cfg.max_steps)
    start = time.monotonic()
    torch.manual_seed(cfg.seed + step)
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, desc="train", unit="step",
               dynamic_ncols=True)
    loss_ema = float("nan")
    first_step, last_log = step, time.monotonic()

    def step_rate(now_step: int) -> float:
        return (now_step - first_step) / max(1e-6, time.monotonic() - start)

    done = step >= cfg.max_steps
    while not done:
        batches_seen = 0
        for i, batch in enumerate(task.train_batches(cfg.seed * 1000 + epoch)):
            batches_seen += 1
            if i < epoch_pos:  # resuming mid-epoch: the batch order is a function of the epoch's seed
                continue
            elapsed = elapsed_before + time.monotonic() - start
            progress_fraction = max(step / cfg.max_steps, elapsed / max_seconds)
            if progress_fraction >= 1.0:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(progress_fraction, warmup)
            loss = task.loss(batch)
            if extra_loss is not None:
                loss = loss + extra_loss()
            if not torch.isfinite(loss):
                raise TrialError(f"training loss became {float(loss.detach())} at step {step}; lower the learning "
                                 "rate or check the quantization config")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            epoch_pos += 1
            if after_step is not None:
                after_step(step)
            value = float(loss.detach())
            loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
            bar.update(1)
            if time.monotonic() - last_log > 30:  # a heartbeat in logs, for runs without a terminal
                last_log = time.monotonic()
                log.info("step %d loss %.3f (%.2f steps/s)", step, loss_ema, step_rate(step))
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
            if step % cfg.eval_every == 0:
                metrics = task.evaluate("dev")
                history.append({"step": step, "loss": loss_ema, **metrics})
                log.info("step %d loss %.3f dev %s", step, loss_ema,
                         " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if on_eval is not None:
                    on_eval(step, metrics)
            if checkpoint is not None and step % cfg.checkpoint_every == 0:
                save()
            if step >= cfg.max_steps:
                done = True
                break
        else:
            if batches_seen == 0:
                raise DataError("The training split yields no batches; check the train manifest.")
            epoch, epoch_pos = epoch + 1, 0
    bar.close()
    seconds = elapsed_before + time.monotonic() - start
    save()
    hooks.finish()
    return TrainResult(steps=step, seconds=seconds, final_loss=loss_ema, history=history)


def _resumable_state(path: Path, key: str | None) -> dict | None:
    """The training state saved at `path` if it can be resumed under `key`; otherwise None, with the
    file moved aside (kept, never deleted) and a warning that names it and why."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("not a training checkpoint")
    except Exception as exc:  # noqa: BLE001 - a torn file raises whatever the unpickler hits first
        why = f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"
    else:
        if key is None or state.get("key") == key:
            return state
        why = f"{path} was saved for another training config (key {state.get('key')!r}, now {key!r})"
    aside = path.with_name(path.name + ".stale")
    path.replace(aside)
    log.warning("%s; moved it to %s and training starts from step 0", why, aside)
    return None
