"""Sites: every quantisable weight of any nn.Module, found by module type, named by module path."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from mpsearch.errors import PolicyError

SITE_KINDS = ("linear", "conv1d", "embedding", "lstm_ih", "lstm_hh", "gru_ih", "gru_hh", "rnn_ih", "rnn_hh")
# Matrices applied to the previous step's state: they run once per frame even in a chunked encoder.
RECURRENT_KINDS = ("lstm_hh", "gru_hh", "rnn_hh")
_RNN_KINDS = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}


class UncoveredWeightWarning(UserWarning):
    """A model holds weight matrices that no site covers: they stay float and no latency counts them."""


@dataclass(frozen=True)
class Site:
    """One quantisable weight.

    `macs` counts multiply-accumulates for one step of the module: one input vector for a Linear or a
    recurrent matrix, one output position for a Conv1d, zero for an Embedding (a row lookup). `step`
    says how often the module runs in streaming inference ("frame", "token", "joint", ...), read from
    the model's optional `site_steps` mapping of top-level submodule names; "frame" when absent.
    `tied` lists the other (module, param) places that hold the very same Parameter (an output
    projection tied to an embedding): the weight is stored once, and `macs` is the sum over all uses.
    """

    name: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]
    macs: int
    step: str = "frame"
    tied: tuple[tuple[str, str], ...] = ()

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


def _module_sites(module_name: str, module: nn.Module, step: str) -> list[tuple[Site, Tensor]]:
    """The sites module `module` owns itself (not its children's), each with its weight tensor."""
    def site(param: str, kind: str, macs: int | None = None, name: str | None = None) -> tuple[Site, Tensor]:
        weight = getattr(module, param)
        shape = tuple(weight.shape)
        return (Site(name or module_name, module_name, param, kind, shape,
                     shape[0] * shape[1] if macs is None else macs, step), weight)

    if isinstance(module, nn.Linear):
        return [site("weight", "linear")]
    if isinstance(module, nn.Conv1d):
        out_ch, in_per_group, k = module.weight.shape
        return [site("weight", "conv1d", out_ch * in_per_group * k)]
    if isinstance(module, nn.Embedding):
        return [site("weight", "embedding", 0)]
    kind = _rnn_kind(module)
    if kind is not None:
        return [site(param, f"{kind}_{param[7:9]}", name=f"{module_name}.{param}")
                for param in module._flat_weights_names if param.startswith(("weight_ih", "weight_hh"))]
    if isinstance(module, nn.MultiheadAttention):
        # The packed q/k/v projection is one matrix the preparation pass splits; its MACs are all three.
        params = ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight",
                                                                        "v_proj_weight"]
        return [site(param, "linear", name=f"{module_name}.{param}") for param in params]
    return []


def _rnn_kind(module: nn.Module) -> str | None:
    for cls, kind in _RNN_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def _weight_norm_parts(module: nn.Module) -> set[str]:
    """Parameter names (relative to `module`) a weight-normed `weight` is computed from."""
    parts = set()
    for hook in getattr(module, "_forward_pre_hooks", {}).values():
        if type(hook).__name__ == "WeightNorm" and getattr(hook, "name", None) == "weight":
            parts |= {"weight_g", "weight_v"}
    parametrized = getattr(module, "parametrizations", None)
    if parametrized is not None and "weight" in parametrized:
        parts |= {f"parametrizations.weight.{n}" for n, _ in parametrized["weight"].named_parameters()}
    return parts


def find_sites(model: nn.Module, strict: bool = False) -> list[Site]:
    """Every Linear, Conv1d, Embedding, recurrent (LSTM, GRU, RNN) input/recurrent matrix and
    MultiheadAttention projection, in module order.

    A weight held under two names (tied) is one site. Parameters of two or more dims that no site covers
    (a Conv2d, a raw positional table, ...; biases, such as per-head attention biases, aside) stay float
    and uncounted: they are named in one UncoveredWeightWarning, or a PolicyError with `strict=True`.
    """
    found: list[tuple[Site, Tensor]] = []
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        own = _module_sites(module_name, module, _step_for(model, module_name))
        found.extend(own)
        prefix = f"{module_name}." if module_name else ""
        covered |= {prefix + s.param for s, _ in own}
        if own:
            covered |= {prefix + part for part in _weight_norm_parts(module)}
            # What a site's layer holds below itself (its quantizers' learned steps, ...) is part of it.
            covered |= {f"{prefix}{child}.{name}" for child, sub in module.named_children()
                        for name, _ in sub.named_parameters()}
    sites = _merge_tied(found)
    uncovered = [f"{name} ({type(model.get_submodule(name.rpartition('.')[0])).__name__})"
                 for name, p in model.named_parameters()
                 if p.dim() >= 2 and name not in covered and "bias" not in name.rpartition(".")[2]]
    if uncovered:
        message = (f"{len(uncovered)} weight(s) of {type(model).__name__} belong to no quantisable site, so they "
                   f"stay float and the latency model leaves them out: {', '.join(uncovered)}. Sites are the "
                   "weights of Linear, Conv1d, Embedding, LSTM, GRU, RNN and MultiheadAttention layers")
        if strict:
            raise PolicyError(message + "; rewrite those layers as such, or pass strict=False to keep them float.")
        message += "."
        warnings.warn(message, UncoveredWeightWarning, stacklevel=2)
    return sites


def _merge_tied(found: list[tuple[Site, Tensor]]) -> list[Site]:
    groups: dict[int, list[Site]] = {}
    for site, weight in found:
        groups.setdefault(id(weight), []).append(site)
    merged = []
    for uses in groups.values():
        if len(uses) == 1:
            merged.append(uses[0])
            continue
        # The heaviest use names the site: its kind and step decide how the weight is read.
        primary = max(uses, key=lambda s: s.macs)
        tied = tuple((s.module, s.param) for s in uses if s is not primary)
        merged.append(Site(primary.name, primary.module, primary.param, primary.kind, primary.shape,
                           sum(s.macs for s in uses), primary.step, tied))
    return merged
