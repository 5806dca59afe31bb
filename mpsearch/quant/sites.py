"""Sites: every quantisable weight of any nn.Module, found by module type, named by module path."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

SITE_KINDS = ("linear", "conv1d", "embedding", "lstm_ih", "lstm_hh")


@dataclass(frozen=True)
class Site:
    """One quantisable weight.

    `macs` counts multiply-accumulates for one step of the module: one input vector for a Linear or an
    LSTM matrix, one output position for a Conv1d, zero for an Embedding (a row lookup). `step` says
    how often the module runs in streaming inference ("frame", "token", "joint", ...), read from the
    model's optional `site_steps` mapping of top-level submodule names; "frame" when absent.
    """

    name: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]
    macs: int
    step: str = "frame"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict:
        return asdict(self)


def _step_for(model: nn.Module, module_name: str) -> str:
    steps = getattr(model, "site_steps", None) or {}
    head = module_name.split(".", 1)[0]
    return steps.get(module_name, steps.get(head, "frame"))


def find_sites(model: nn.Module) -> list[Site]:
    """Every Linear, Conv1d, Embedding and LSTM input/recurrent matrix, in module order."""
    sites: list[Site] = []
    for module_name, module in model.named_modules():
        step = _step_for(model, module_name)
        if isinstance(module, nn.Linear):
            shape = tuple(module.weight.shape)
            sites.append(Site(module_name, module_name, "weight", "linear", shape, shape[0] * shape[1], step))
        elif isinstance(module, nn.Conv1d):
            out_ch, in_per_group, k = module.weight.shape
            sites.append(Site(module_name, module_name, "weight", "conv1d", tuple(module.weight.shape),
                              out_ch * in_per_group * k, step))
        elif isinstance(module, nn.Embedding):
            sites.append(Site(module_name, module_name, "weight", "embedding", tuple(module.weight.shape), 0, step))
        elif isinstance(module, nn.LSTM):
            suffixes = ["", "_reverse"] if module.bidirectional else [""]
            for layer in range(module.num_layers):
                for suffix in suffixes:
                    for kind, stem in (("lstm_ih", "weight_ih"), ("lstm_hh", "weight_hh")):
                        param = f"{stem}_l{layer}{suffix}"
                        shape = tuple(getattr(module, param).shape)
                        sites.append(Site(f"{module_name}.{param}", module_name, param, kind, shape,
                                          shape[0] * shape[1], step))
    return sites
