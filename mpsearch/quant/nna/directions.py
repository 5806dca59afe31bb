"""Layer-directions of an NNA recurrent layer: the unit its weights, tables and scales come in."""

from __future__ import annotations


class LayerDirections:
    """Mixin of the NNA LSTM and GRU: per-direction state is indexed by slot = layer * directions + direction,
    torch's order of its weights (layer 0 forward, layer 0 reverse, layer 1 forward, ...)."""

    bidirectional: bool
    num_layers: int

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def slots(self) -> int:
        return self.num_layers * self.directions

    def _tag(self, slot: int) -> str:
        """The suffix of slot's weight names: l<layer>, with _reverse for the reverse direction."""
        layer, direction = divmod(slot, self.directions)
        return f"l{layer}{'_reverse' if direction else ''}"
