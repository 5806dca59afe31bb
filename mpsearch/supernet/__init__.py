"""Differentiable mixed-precision search (DNAS): a supernet mixes every candidate bit width (and
sparsity) of each searched site, trains weights and architecture logits in turn under a latency
penalty, and derives one Policy per lambda of a sweep."""

from mpsearch.supernet.cost import ExpectedCost
from mpsearch.supernet.mixed import Choice, MixedPrecisionWeight, SupernetError
from mpsearch.supernet.network import ChoiceSet, Supernet
from mpsearch.supernet.report import format_supernet_table
from mpsearch.supernet.search import SupernetCandidate, SupernetTrainer, search
from mpsearch.supernet.stage import ensure_supernet

__all__ = [
    "Choice", "ChoiceSet", "ExpectedCost", "MixedPrecisionWeight", "Supernet", "SupernetCandidate",
    "SupernetError", "SupernetTrainer", "ensure_supernet", "format_supernet_table", "search",
]
