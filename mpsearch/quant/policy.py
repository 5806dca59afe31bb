"""Policy: an ordered map from site name, `re:` pattern or `_default` to a QuantConfig or None (float).

Resolution: an exact site name wins, then the first `re:` pattern (full match) in order, then `_default`;
a site nothing matches stays float. The JSON form carries `_type`, `_version` and the model's site list,
so loading against a different model is caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mpsearch.artifacts import check_header, read_json, write_json
from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.sites import Site

POLICY_TYPE = "mpsearch.Policy"
POLICY_VERSION = 1
DEFAULT_KEY = "_default"
PATTERN_PREFIX = "re:"


class Policy:
    def __init__(self, rules: Mapping[str, QuantConfig | dict | None], site_names: Iterable[str] | None = None):
        self.rules: dict[str, QuantConfig | None] = {}
        for key, cfg in rules.items():
            if isinstance(cfg, dict):
                try:
                    cfg = QuantConfig.from_dict(cfg)
                except PolicyError as exc:
                    raise PolicyError(f"Policy entry '{key}': {exc}") from None
            if cfg is not None and not isinstance(cfg, QuantConfig):
                raise PolicyError(f"Policy entry '{key}' must be a QuantConfig, a mapping or null; got {cfg!r}.")
            if key.startswith(PATTERN_PREFIX):
                try:
                    re.compile(key[len(PATTERN_PREFIX):])
                except re.error as exc:
                    raise PolicyError(f"Policy pattern '{key}' is not a valid regular expression ({exc}).") from None
            self.rules[key] = cfg
        self.site_names = list(site_names) if site_names is not None else None

    @classmethod
    def uniform(cls, config: QuantConfig, site_names: Iterable[str] | None = None) -> Policy:
        return cls({DEFAULT_KEY: config}, site_names)

    def resolve(self, site_name: str) -> QuantConfig | None:
        if site_name in self.rules:
            return self.rules[site_name]
        for key, cfg in self.rules.items():
            if key.startswith(PATTERN_PREFIX) and re.fullmatch(key[len(PATTERN_PREFIX):], site_name):
                return cfg
        return self.rules.get(DEFAULT_KEY)

    def resolve_all(self, sites: Iterable[Site]) -> dict[str, QuantConfig | None]:
        return {s.name: self.resolve(s.name) for s in sites}

    def validate(self, sites: list[Site], methods: Iterable[str] | None = None) -> Policy:
        """Check every key names a site (or a pattern matching one) and every method is registered."""
        names = [s.name for s in sites]
        known = set(names)
        if self.site_names is not None and self.site_names != names:
            missing = sorted(set(self.site_names) - known)
            extra = sorted(known - set(self.site_names))
            raise PolicyError(
                "The policy was made for a different model (sites missing here: "
                f"{missing[:5] or 'none'}; sites not in the policy: {extra[:5] or 'none'}); export it again for this model.")
        for key in self.rules:
            if key == DEFAULT_KEY:
                continue
            if key.startswith(PATTERN_PREFIX):
                pattern = key[len(PATTERN_PREFIX):]
                if not any(re.fullmatch(pattern, n) for n in names):
                    raise PolicyError(f"Policy pattern '{key}' matches no site; sites are: {_preview(names)}.")
            elif key not in known:
                raise PolicyError(f"Unknown site '{key}' in policy; valid sites: {_preview(names)}.")
        if methods is not None:
            methods = sorted(methods)
            for key, cfg in self.rules.items():
                if cfg is not None and cfg.method not in methods:
                    raise PolicyError(f"Unknown method '{cfg.method}' for '{key}'; valid choices: {', '.join(methods)}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": POLICY_TYPE,
            "_version": POLICY_VERSION,
            "sites": self.site_names,
            "rules": {k: (v.to_dict() if v is not None else None) for k, v in self.rules.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        check_header(data, POLICY_TYPE, POLICY_VERSION, source=source, what="an mpsearch policy",
                     noun="policy version", remedy="write one with `mpsearch export`", error=PolicyError)
        rules = data.get("rules")
        if not isinstance(rules, dict):
            raise PolicyError(f"{source}: 'rules' must be a mapping of site -> config.")
        try:
            return cls(rules, data.get("sites"))
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        # Rule order is part of the meaning (the first matching pattern wins), so keys are not sorted.
        write_json(path, self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"Policy file '{path}' does not exist; create one with `mpsearch export`.")
        try:
            data = read_json(path)
        except ValueError as exc:
            raise PolicyError(f"{path} is not valid JSON ({exc}); export the policy again.") from None
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.rules == other.rules and self.site_names == other.site_names

    def __repr__(self) -> str:
        return f"Policy({self.rules!r})"


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
