"""mpsearch.api.search_model on a user's own model, without YAML (the README's example, smaller)."""

import torch
from optuna.trial import TrialState
from torch import nn

from mpsearch.api import search_model


def make_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=gen)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def factory():
        fresh = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
        fresh.load_state_dict(state)
        return fresh

    def train_step(m, step):
        return nn.functional.cross_entropy(m(x), y)

    def evaluate(m):
        return {"wer": (m(x).argmax(1) != y).float().mean().item()}

    return factory, train_step, evaluate


def test_search_model_finds_a_front_on_a_user_model_and_resumes(tmp_path):
    factory, train_step, evaluate = make_problem()
    space = {"groups": {"hidden": {"sites": "0", "weight_bits": [2, 4, 8]}, "out": {"sites": "2", "weight_bits": [2, 8]}}}
    # one trial at a time: a concurrent worker may finish one more point than asked while the last runs
    kwargs = {"space": space, "trials": 5, "finetune_steps": 3, "output_dir": tmp_path, "progress": False,
              "workers": 1}
    result = search_model(factory, train_step, evaluate, **kwargs)
    # 5 distinct points; a point the sampler proposed again is answered from its trial (copied_from).
    complete = [t for t in result.study.get_trials(states=(TrialState.COMPLETE,)) if "copied_from" not in t.user_attrs]
    assert len(complete) == 5
    origins = {t.user_attrs["origin"]: t for t in complete}
    assert {"uniform-8", "uniform-2"} <= set(origins)
    assert origins["uniform-2"].values[0] > origins["uniform-8"].values[0]  # 2 bits hurt this model
    assert origins["uniform-2"].values[1] < origins["uniform-8"].values[1]
    knee = result.knee()
    assert knee in set(result.front["trial"])
    policy = result.policy(knee)
    assert policy.site_names == ["0", "2"] and policy.resolve("0").weight_bits in (2, 4, 8)
    again = search_model(factory, train_step, evaluate, **kwargs)
    assert len(again.study.trials) == len(result.study.trials)  # resumed, nothing re-run


def test_the_readme_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## Your own model, from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "my-policy.json").is_file()
