from itertools import pairwise

import pytest
import torch
from torch import nn

from mpsearch.config import TrainConfig
from mpsearch.errors import ConfigError
from mpsearch.quant import Policy, QuantConfig, apply, quantized_sites
from mpsearch.quant.methods.hooks import scheduled_sites, training_hooks
from mpsearch.training.trainer import TrainHooks, train


class RegressionTask:
    """Least squares through a small MLP: enough for the trainer to drive the hooks."""

    def __init__(self, model):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 8, generator=gen)
        self.y = torch.randn(64, 4, generator=gen)
        self.model = model

    def loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def train_batches(self, seed):
        for i in range(0, 64, 16):
            yield self.x[i:i + 16], self.y[i:i + 16]

    def evaluate(self, split):
        with torch.no_grad():
            return {"mse": float(self.loss((self.x, self.y)))}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def every_method():
    return apply(mlp(), Policy({
        "0": QuantConfig(weight_bits=3, act_bits=None, method="gq",
                         options={"temperature": 0.5, "anneal_end": 0.5}),
        "2": QuantConfig(weight_bits=3, act_bits=None, method="s8bqat", options={"compress_every": 5},
                         sparsity={"method": "csp", "fraction": 0.5}),
        "4": QuantConfig(weight_bits=4, act_bits=None, method="admm", options={"updates": 4, "recovery": 0.0},
                         sparsity="2:4"),
    }))


def test_hooks_drive_every_schedule_through_the_trainer():
    model = every_method()
    hooks = training_hooks(model, total_steps=20)
    extra_loss, after_step = hooks  # unpacks into the trainer's callbacks
    assert extra_loss is not None and len(scheduled_sites(model)) == 5
    gq, s8b, admm = (quantized_sites(model)[name] for name in ("0", "2", "4"))
    assert gq.temperature == pytest.approx(0.5)  # the anneal starts when the hooks are made
    temperatures, sparsities = [], []

    def record(step):
        after_step(step)
        temperatures.append(gq.temperature)
        sparsities.append(model[2].weight_sparsifiers["weight"].sparsity)

    task = RegressionTask(model)
    cfg = TrainConfig(max_steps=20, lr=0.01, warmup_steps=0, eval_every=100, checkpoint_every=100)
    train(task, cfg, TrainHooks(extra_loss, record), progress=False)
    hooks.finish()

    assert temperatures[:10] == pytest.approx([0.5 * (1 - s / 10) for s in range(1, 11)])
    assert temperatures[-1] == 0
    assert sparsities[-1] == 0.5 and all(b >= a for a, b in pairwise(sparsities))
    assert len(admm.residuals) == 4  # steps 5, 10, 15, 20
    nm = model[4].weight_sparsifiers["weight"].mask
    assert bool((nm.reshape(-1, 4).sum(dim=1) == 2).all())
    # After finish, S8BQAT's weights sit on their centroids (hard compression) and GQ is hard.
    s8b.eval()
    assert torch.equal(s8b(model[2].weight).detach(), model[2].weight.detach())
    assert gq.quantized_in_training
    assert torch.isfinite(torch.tensor(task.evaluate("dev")["mse"]))


def test_hooks_without_scheduled_methods_and_bad_step_counts():
    model = apply(mlp(), Policy.uniform(QuantConfig(weight_bits=4, act_bits=None)))
    hooks = training_hooks(model, 10)
    assert hooks.extra_loss is None and not hooks.after_step.sites
    hooks.after_step(3)
    hooks.finish()
    with pytest.raises(ConfigError, match="total step count"):
        training_hooks(model, 0)


def test_extra_loss_sums_every_method_term():
    model = every_method()
    hooks = training_hooks(model, 20)
    _, s8b, admm = (quantized_sites(model)[name] for name in ("0", "2", "4"))
    csp = model[2].weight_sparsifiers["weight"]
    expected = s8b.loss_term(model[2].weight) + admm.penalty(model[4].weight) + csp.loss_term(model[2].weight)
    assert float(hooks.extra_loss().detach()) == pytest.approx(float(expected.detach()))
