"""One-shot shared weights: the sandwich of policies per step, and shared weights that serve the narrow
policies of the space better than the float weights they started from, without touching the float model."""

import copy

import torch

from mpsearch.config import TrainConfig
from mpsearch.quant import apply
from mpsearch.supernet.network import choice_sets
from mpsearch.supernet.oneshot import choice_cost, sandwich, train_shared_weights


class DistillTask:
    """The toy model's distance to its own float outputs (the teacher), on fixed batches."""

    def __init__(self, model, batches):
        self.model = model
        self.batches = batches

    def loss(self, batch):
        feats, tokens, target = batch
        return 100.0 * (self.model(feats, tokens) - target).pow(2).mean()

    def train_batches(self, seed):
        return iter(self.batches)

    def evaluate(self, split):
        with torch.no_grad():
            return {"loss": float(sum(self.loss(b) for b in self.batches))}


def test_sandwich_draws_the_widest_and_the_narrowest_then_random_points(toy_space):
    sets = choice_sets(toy_space)
    torch.manual_seed(0)
    draws = sandwich(sets, random_policies=3)
    assert len(draws) == 5
    widest, narrowest = draws[0], draws[1]
    for cs, w, n in zip(sets, widest, narrowest):
        costs = [choice_cost(cs, i) for i in range(len(cs.choices))]
        assert costs[w] == max(costs) and cs.choices[w].weight_bits == 8 and cs.choices[w].sparsity == "dense"
        assert costs[n] == min(costs) and cs.choices[n].weight_bits == 2
    predictor = [cs for cs in sets if cs.prefix.startswith("predictor")][0]
    assert predictor.choices[narrowest[sets.index(predictor)]].sparsity == "2:4"
    for draw in draws[2:]:
        assert all(0 <= i < len(cs.choices) for cs, i in zip(sets, draw))


def _narrowest_loss(model, space, batches) -> float:
    sets = choice_sets(space)
    params = {}
    for cs, index in zip(sets, sandwich(sets, 0)[1]):
        params.update(cs.params(index))
    quantized = apply(model, space.to_policy(params))
    return DistillTask(quantized, batches).evaluate("dev")["loss"]


def test_shared_weights_serve_the_narrowest_policy_better_and_leave_the_float_model_alone(toy, toy_space):
    model, batches = toy
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=0, eval_every=1000, checkpoint_every=1000, seed=0)
    torch.manual_seed(0)
    state, result = train_shared_weights(model, toy_space, lambda m: DistillTask(m, batches), cfg, random_policies=1)
    assert result.steps == 30
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shared = copy.deepcopy(model)
    shared.load_state_dict(state)
    assert _narrowest_loss(shared, toy_space, batches) < 0.7 * _narrowest_loss(model, toy_space, batches)


def test_shared_training_resumes_from_its_checkpoint(toy, toy_space, tmp_path, caplog):
    model, batches = toy
    checkpoint = tmp_path / "checkpoint.pt"
    short = TrainConfig(max_steps=4, lr=3e-3, warmup_steps=0, eval_every=1000, checkpoint_every=2, seed=0)
    train_shared_weights(model, toy_space, lambda m: DistillTask(m, batches), short, 1, checkpoint=checkpoint,
                         checkpoint_key="k")
    assert torch.load(checkpoint, weights_only=False)["step"] == 4
    longer = short.model_copy(update={"max_steps": 6})
    caplog.set_level("INFO", logger="mpsearch.training.trainer")
    _, result = train_shared_weights(model, toy_space, lambda m: DistillTask(m, batches), longer, 1,
                                     checkpoint=checkpoint, checkpoint_key="k")
    assert result.steps == 6 and "resumed training" in caplog.text and "at step 4" in caplog.text
    assert torch.load(checkpoint, weights_only=False)["step"] == 6
