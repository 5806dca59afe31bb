import pytest
import torch

from mpsearch.config import TrainConfig
from mpsearch.errors import TrialError
from mpsearch.training.trainer import TrainHooks, train


class RegressionTask:
    """A tiny least-squares problem exercising the trainer's contract."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(64, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(8, 1)

    def loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y)

    def train_batches(self, seed):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
        for i in range(0, 64, 16):
            idx = order[i:i + 16]
            yield self.x[idx], self.y[idx]

    def evaluate(self, split):
        with torch.no_grad():
            return {"mse": float(self.loss((self.x, self.y)))}


CFG = TrainConfig(max_steps=40, lr=0.05, warmup_steps=4, eval_every=10, checkpoint_every=1)


def test_training_lowers_the_loss():
    task = RegressionTask()
    before = task.evaluate("dev")["mse"]
    result = train(task, CFG, progress=False)
    assert result.steps == 40
    assert task.evaluate("dev")["mse"] < 0.1 * before
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    reference = RegressionTask()
    train(reference, CFG, progress=False)

    killed = RegressionTask()

    def kill(step):
        if step == 11:  # mid-epoch: 4 batches per epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(killed, CFG, TrainHooks(after_step=kill), checkpoint=tmp_path / "ckpt.pt", progress=False)
    resumed = RegressionTask(seed=0)
    torch.nn.init.zeros_(resumed.model.weight)  # the checkpoint, not the init, must decide
    result = train(resumed, CFG, checkpoint=tmp_path / "ckpt.pt", progress=False)
    assert result.steps == 40
    torch.testing.assert_close(resumed.model.weight, reference.model.weight, rtol=1e-6, atol=1e-7)


def test_nan_loss_is_a_trial_error():
    task = RegressionTask()
    task.y[0] = float("nan")
    with pytest.raises(TrialError, match="loss became nan"):
        train(task, CFG, progress=False)
