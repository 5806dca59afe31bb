"""SearchSpace: per site group, the allowed weight bits, activation bits, methods and sparsity.

Read from `search_spaces/*.yaml` and checked against the model's sites, so every problem (an empty
group, a pattern that matches no site, a site in two groups, a method outside the registry) is an error
naming the file and the line. Backend-neutral: a trial's parameters are a flat mapping of
`<group>.<field>` (tied group) or `<group>[<site>].<field>` (untied group) to one of the group's
choices; the Optuna and Ray adapters turn `parameters()` into their own distributions.

    groups:
      encoder:
        sites: "encoder.*"            # glob on site names, "re:<regex>", or a list of either
        weight_bits: [2, 3, 4, 5, 6, 8]
        method: [uniform, gq]
        act_bits: [8]                 # optional, default [8]
        sparsity: [null, "2:4"]       # optional, default [null]: null, "N:M", {method: csp, fraction: 0.5}
        tied: true                    # optional, default true: one choice for every site of the group
    rest: {weight_bits: 8}            # sites in no group (optional, default 8-bit uniform)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.quant.config import QuantConfig, SparsityConfig
from mpsearch.quant.policy import Policy
from mpsearch.quant.sites import Site

FIELDS = ("weight_bits", "act_bits", "method", "sparsity")
GROUP_KEYS = {"sites", "tied", *FIELDS}
DENSE = "dense"


@dataclass(frozen=True)
class Parameter:
    """One searched choice: a name and its allowed values (ints or strings, as every backend stores)."""

    name: str
    choices: tuple[int | str, ...]


@dataclass(frozen=True)
class Group:
    name: str
    sites: tuple[str, ...]
    choices: Mapping[str, tuple]          # field -> allowed values (sparsity as labels)
    tied: bool = True

    def prefixes(self) -> list[tuple[str, tuple[str, ...]]]:
        """(parameter prefix, sites it sets): one for a tied group, one per site otherwise."""
        if self.tied:
            return [(self.name, self.sites)]
        return [(f"{self.name}[{site}]", (site,)) for site in self.sites]


class SearchSpace:
    def __init__(self, groups: Sequence[Group], rest: QuantConfig | None, site_names: Sequence[str],
                 source: str = "<search space>"):
        self.groups = list(groups)
        self.rest = rest
        self.site_names = list(site_names)
        self.source = source

    # --- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, sites: Sequence[Site], methods: Sequence[str] | None = None) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Search space '{path}' does not exist; point search.space at a file in search_spaces/.")
        text = path.read_text()
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: YAML syntax error ({getattr(exc, 'problem', exc)}); fix the syntax.") from None
        return cls.from_dict(data, sites, methods, source=str(path), lines=_line_index(node))

    @classmethod
    def from_dict(cls, data: Any, sites: Sequence[Site], methods: Sequence[str] | None = None,
                  source: str = "<search space>", lines: Mapping[tuple, int] | None = None) -> SearchSpace:
        lines = lines or {}

        def fail(path: tuple, message: str) -> ConfigError:
            line = next((lines[path[:i]] for i in range(len(path), -1, -1) if path[:i] in lines), None)
            return ConfigError(f"{source}{f' line {line}' if line else ''}: {message}")

        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or not data["groups"]:
            raise fail((), "a search space needs 'groups:', a mapping of group name -> sites and choices.")
        unknown = set(data) - {"groups", "rest"}
        if unknown:
            raise fail((min(unknown),), f"unknown key '{min(unknown)}'; valid keys: groups, rest.")
        if methods is None:
            from mpsearch.quant.quantizers import QUANTIZERS

            methods = QUANTIZERS.names()
        names = [s.name for s in sites]
        owner: dict[str, str] = {}
        groups = []
        for group_name, spec in data["groups"].items():
            where = ("groups", group_name)
            if not isinstance(spec, dict):
                raise fail(where, f"group '{group_name}' must be a mapping with 'sites' and choices.")
            unknown = sorted(set(spec) - GROUP_KEYS)
            if unknown:
                raise fail(where + (unknown[0],), f"group '{group_name}': unknown key '{unknown[0]}'; "
                           f"valid keys: {', '.join(sorted(GROUP_KEYS))}.")
            if "sites" not in spec:
                raise fail(where, f"group '{group_name}' has no 'sites'; add a glob or 're:' pattern.")
            patterns = spec["sites"] if isinstance(spec["sites"], list) else [spec["sites"]]
            matched: list[str] = []
            for pattern in patterns:
                try:
                    hits = _match(str(pattern), names)
                except ConfigError as exc:
                    raise fail(where + ("sites",), f"group '{group_name}': {exc}") from None
                if not hits:
                    raise fail(where + ("sites",), f"group '{group_name}': pattern '{pattern}' matches no site; "
                               f"sites are: {_preview(names)}.")
                matched += [h for h in hits if h not in matched]
            for site in matched:
                if site in owner:
                    raise fail(where + ("sites",), f"site '{site}' is in groups '{owner[site]}' and '{group_name}'; "
                               "a site belongs to one group.")
                owner[site] = group_name
            choices = {}
            for field in FIELDS:
                raw = spec.get(field, _DEFAULTS[field])
                raw = raw if isinstance(raw, list) else [raw]
                if not raw:
                    raise fail(where + (field,), f"group '{group_name}': '{field}' is empty; list at least one choice.")
                try:
                    choices[field] = tuple(dict.fromkeys(_choice(field, v, methods) for v in raw))
                except MpsearchError as exc:
                    raise fail(where + (field,), f"group '{group_name}': {exc}") from None
            tied = spec.get("tied", True)
            if not isinstance(tied, bool):
                raise fail(where + ("tied",), f"group '{group_name}': 'tied' must be true or false; got {tied!r}.")
            ordered = tuple(n for n in names if n in matched)
            group = Group(str(group_name), ordered, choices, tied)
            try:
                for combo in _combinations(choices):
                    _config(combo)
            except MpsearchError as exc:
                raise fail(where, f"group '{group_name}': {exc}") from None
            groups.append(group)
        rest_spec = data.get("rest", {"weight_bits": 8})
        try:
            rest = None if rest_spec is None else QuantConfig.from_dict(rest_spec)
        except MpsearchError as exc:
            raise fail(("rest",), f"rest: {exc}") from None
        return cls(groups, rest, names, source)

    # --- parameters and policies ----------------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """Every searched choice (a field with a single allowed value is fixed, not searched)."""
        params = []
        for group in self.groups:
            for prefix, _ in group.prefixes():
                for field in FIELDS:
                    if len(group.choices[field]) > 1:
                        params.append(Parameter(f"{prefix}.{field}", group.choices[field]))
        return params

    def to_policy(self, params: Mapping[str, Any]) -> Policy:
        """The Policy a trial's parameters stand for: one exact rule per site of the model."""
        known = {p.name: p for p in self.parameters()}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"Parameter '{unknown[0]}' is not in the search space {self.source}; "
                              f"parameters are: {_preview(sorted(known))}.")
        rules: dict[str, QuantConfig | None] = {}
        for group in self.groups:
            for prefix, sites in group.prefixes():
                combo = {}
                for field in FIELDS:
                    name, allowed = f"{prefix}.{field}", group.choices[field]
                    if len(allowed) > 1 and name not in params:
                        raise ConfigError(f"Parameter '{name}' is missing; a trial sets every parameter of "
                                          f"{self.source}.")
                    value = params[name] if len(allowed) > 1 else allowed[0]
                    if value not in allowed:
                        raise ConfigError(f"Parameter '{name}' = {value!r} is not an allowed choice "
                                          f"({', '.join(map(str, allowed))}) in {self.source}.")
                    combo[field] = value
                for site in sites:
                    rules[site] = _config(combo)
        for site in self.site_names:
            rules.setdefault(site, self.rest)
        return Policy({s: rules[s] for s in self.site_names}, self.site_names)

    def params_for(self, policy: Policy) -> dict[str, int | str]:
        """The nearest point of the space to `policy` (an ILP or supernet answer, a uniform policy).

        For a tied group whose sites the policy treats differently, the group takes the bit width most
        of its sites have (ties: the wider; rounded up to an allowed choice), so an ILP allocation that
        leaves one site of a group wide still lowers the rest; method and sparsity come from the
        group's first site, if allowed."""
        configs = {s: policy.resolve(s) for s in self.site_names}
        params: dict[str, int | str] = {}
        for group in self.groups:
            for prefix, sites in group.prefixes():
                chosen = [configs[s] for s in sites if configs[s] is not None]
                for field in FIELDS:
                    allowed = group.choices[field]
                    if len(allowed) == 1:
                        continue
                    if field in ("weight_bits", "act_bits"):
                        widths = [getattr(c, field) or 8 for c in chosen]
                        wanted = max(widths, key=lambda b: (widths.count(b), b), default=max(allowed))
                        value = min((b for b in allowed if b >= wanted), default=max(allowed))
                    else:
                        first = _label(field, getattr(chosen[0], field)) if chosen else allowed[0]
                        value = first if first in allowed else allowed[0]
                    params[f"{prefix}.{field}"] = value
        return params

    def uniform_params(self, weight_bits: int, method: str | None = None) -> dict[str, int | str] | None:
        """Every group at `weight_bits` and `method` (default: each group's first method), the other
        fields at their first choice; None where some group does not allow it."""
        params: dict[str, int | str] = {}
        for group in self.groups:
            wanted = {"weight_bits": weight_bits, "method": method}
            if weight_bits not in group.choices["weight_bits"] or (method and method not in group.choices["method"]):
                return None
            for prefix, _ in group.prefixes():
                for field in FIELDS:
                    allowed = group.choices[field]
                    if len(allowed) > 1:
                        params[f"{prefix}.{field}"] = wanted.get(field) or allowed[0]
        return params

    def weight_bit_choices(self) -> list[int]:
        """Bit widths every group allows: the uniform-precision reference points."""
        common = set.intersection(*(set(g.choices["weight_bits"]) for g in self.groups))
        return sorted(common)

    def group_of(self, site: str) -> str | None:
        return next((g.name for g in self.groups if site in g.sites), None)

    def describe(self) -> list[dict[str, Any]]:
        return [{"group": g.name, "sites": len(g.sites), "site_names": list(g.sites), "tied": g.tied,
                 **{f: list(g.choices[f]) for f in FIELDS}} for g in self.groups]

    def size(self) -> int:
        n = 1
        for p in self.parameters():
            n *= len(p.choices)
        return n


_DEFAULTS = {"weight_bits": [8], "act_bits": [8], "method": ["uniform"], "sparsity": [None]}


def _choice(field: str, value: Any, methods: Sequence[str]) -> int | str:
    if field in ("weight_bits", "act_bits"):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
            raise ConfigError(f"'{field}' choices must be integers in [2, 8]; got {value!r}.")
        return value
    if field == "method":
        if value not in methods:
            raise ConfigError(f"unknown method '{value}'; valid choices: {', '.join(sorted(methods))}.")
        return value
    return _label("sparsity", SparsityConfig.parse(value))


def _label(field: str, value: Any) -> Any:
    """Sparsity choices are stored as short strings: 'dense', '2:4', 'csp:0.5', 'magnitude:0.5'."""
    if field != "sparsity":
        return value
    if value is None:
        return DENSE
    if value.method == "nm":
        return f"{value.n}:{value.m}"
    return f"{value.method}:{value.fraction:g}"


def sparsity_from_label(label: str) -> SparsityConfig | None:
    """'dense' -> None, 'N:M' -> N:M sparsity, 'method:fraction' -> unstructured sparsity."""
    if label == DENSE:
        return None
    head, _, tail = label.partition(":")
    if head.isdigit():
        return SparsityConfig("nm", n=int(head), m=int(tail))
    return SparsityConfig(head, fraction=float(tail))


def _config(combo: Mapping[str, Any]) -> QuantConfig:
    return QuantConfig(weight_bits=combo["weight_bits"], act_bits=combo["act_bits"], method=combo["method"],
                       sparsity=sparsity_from_label(combo["sparsity"]))


def _combinations(choices: Mapping[str, tuple]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for field in FIELDS:
        combos = [{**c, field: v} for c in combos for v in choices[field]]
    return combos


def _match(pattern: str, names: Sequence[str]) -> list[str]:
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"pattern '{pattern}' is not a valid regular expression ({exc}).") from None
        return [n for n in names if regex.fullmatch(n)]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _line_index(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """(key path) -> 1-based line of that key, for error messages."""
    index: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            index[sub] = key.start_mark.line + 1
            index.update(_line_index(value, sub))
    return index


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
