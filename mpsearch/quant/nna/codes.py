"""How NNA modules hand output codes to each other: tables of codes (`TableCodes`), codes riding on the
emitted float tensor (`attach_codes`), and a float value left uncomputed until something reads it
(`DeferredValue`).

An add's result is a function of its two input codes alone, so it is a lookup in a table of every
code pair; a consumer on the producer's scale reads the codes back without dividing by the scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from mpsearch.quant.nna.kernels import exact_matmul_dtype, lookup, matmul_operands
from mpsearch.quant.nna.numerics import saturate

# Elements per chunk of a `TableCodes` gather: a chunk's index (int32) and codes stay within L2.
GATHER_CHUNK = 1 << 18


class TableCodes(NamedTuple):
    """Codes held as table[index], the index being the broadcast sum of int32 `parts`, gathered chunk
    by chunk where needed.

    How an add and a lookup table hand over their output. The add of int8 codes a and b is a
    2^16-entry table of every result, indexed by (a - lo) * 2^8 + (b - lo): a broadcast add (the RNN-T
    joiner's (B, T, U, J) lattice from (B, T, 1, J) and (B, 1, U, J)) never materialises a full-size
    index, and a lookup table behind it composes its table with the add's instead of indexing the
    lattice again. Dequantized values are gathered from the table's values (the same float32 product
    code * scale as an elementwise one); a linear consumer gathers each chunk of its input codes
    right before that chunk's matmul, so full-size codes never exist either.
    """

    table: Tensor  # 1-D int64
    parts: tuple[Tensor, ...]  # int32, all with the same number of dims

    @classmethod
    def of(cls, table: Tensor, parts: list[Tensor]) -> TableCodes:
        dims = max(p.dim() for p in parts)
        return cls(table, tuple(p.reshape((1,) * (dims - p.dim()) + p.shape) for p in parts))

    @property
    def shape(self) -> torch.Size:
        return torch.broadcast_shapes(*(p.shape for p in self.parts))

    def then(self, outer: Tensor, offset: int) -> TableCodes:
        """The codes outer[code + offset] (a lookup table applied to these codes), on the table alone."""
        return TableCodes(lookup(outer, self.table + offset), self.parts)

    def chunks(self) -> Iterator[tuple[tuple[slice, ...], Tensor]]:
        """(region, index there) over blocks of the first dim longer than 1, of about GATHER_CHUNK
        elements each; the dims before it have length 1, so a region of a contiguous tensor is
        contiguous."""
        shape = self.shape
        if not shape.numel():
            return
        if not shape:
            yield (), sum(self.parts[1:], self.parts[0])
            return
        dim = next((d for d, size in enumerate(shape) if size > 1), len(shape) - 1)
        step = max(1, GATHER_CHUNK // max(1, shape[dim + 1:].numel()))
        for start in range(0, shape[dim], step):
            region = (slice(None),) * dim + (slice(start, start + step),)
            pieces = [p[region] if p.shape[dim] > 1 else p for p in self.parts]
            yield region, sum(pieces[1:], pieces[0])

    def take(self, values: Tensor) -> Tensor:
        """values[index] for a 1-D `values` indexed like `table` (the codes in some dtype, or their
        dequantized values)."""
        out = torch.empty(self.shape, dtype=values.dtype, device=values.device)
        for region, index in self.chunks():
            torch.index_select(values, 0, index.reshape(-1), out=out[region].view(-1))
        return out

    def matmul(self, weight_codes: Tensor) -> Tensor:
        """`integer_matmul(codes, weight_codes)`, each chunk of codes gathered in the matmul's dtype."""
        shape = self.shape
        dtype = exact_matmul_dtype(shape[-1], self.table.device)
        values, weight_t = self.table.to(dtype), weight_codes.to(dtype).t()
        out = torch.empty(*shape[:-1], weight_t.shape[1], dtype=torch.int32 if dtype == torch.int8 else dtype,
                          device=values.device)
        for region, index in self.chunks():
            matmul_operands(lookup(values, index), weight_t, out=out[region])
        return out.to(torch.int64)



class AttachedCodes(NamedTuple):
    """Output codes riding on the float tensor emitted from them (see `attach_codes`)."""

    codes: Tensor | TableCodes
    scale: float
    version: int
    bounds: tuple[int, int]

    def within(self, bounds: tuple[int, int]) -> Tensor | TableCodes:
        """The codes saturated to `bounds` (a table's on the table alone)."""
        if bounds[0] <= self.bounds[0] and self.bounds[1] <= bounds[1]:
            return self.codes
        if isinstance(self.codes, TableCodes):
            return self.codes._replace(table=saturate(self.codes.table, bounds))
        return saturate(self.codes, bounds)

    def dense(self, bounds: tuple[int, int]) -> Tensor:
        """`within(bounds)` as an int64 tensor."""
        codes = self.within(bounds)
        return codes.take(codes.table) if isinstance(codes, TableCodes) else codes.to(torch.int64)


def attach_codes(value: Tensor, codes: Tensor | TableCodes, scale: Tensor, bounds: tuple[int, int]) -> None:
    """Let consumers of `value` (= codes * scale) take `codes` (all within `bounds`) instead of
    recovering them by a division; they are dropped when value changes in place or scales differ."""
    value._nna_codes = AttachedCodes(codes, float(scale), value._version, bounds)


def attached_codes(x: Tensor, scale: Tensor) -> AttachedCodes | None:
    """The codes `x` was emitted from, if x is unchanged since and on the grid of `scale`; for a view
    of an emitted tensor (a slice, an unsqueeze), the same view of its codes."""
    attached = getattr(x, "_nna_codes", None)
    if attached is None and x._base is not None:
        attached = _viewed(getattr(x._base, "_nna_codes", None), x, x._base)
    if attached is None or attached.version != x._version or attached.scale != float(scale):
        return None
    return attached


def _viewed(attached: AttachedCodes | None, view: Tensor, base: Tensor) -> AttachedCodes | None:
    """`attached` (base's codes) cut as `view` cuts base, where both lie alike in memory (emit's codes
    and values do: the values are a same-layout copy of the codes)."""
    if attached is None or isinstance(attached.codes, TableCodes) or view.dtype != base.dtype:
        return None
    codes = attached.codes
    if codes.shape != base.shape or codes.stride() != base.stride():
        return None
    offset = codes.storage_offset() + view.storage_offset() - base.storage_offset()
    return attached._replace(codes=codes.as_strided(view.shape, view.stride(), offset))


class DeferredValue(Tensor):
    """The float value code * scale of table-held codes, computed only when something reads it.

    Without gradients, an add or a lookup table hands its codes to the next NNA module, which reads
    only them: the RNN-T joiner's add and tanh would otherwise each write a (B, T, U, J) float32
    lattice nobody reads. Any other use (a float op, printing, returning it) goes through
    __torch_dispatch__, which computes the dense value once and runs the op on it, so the result is
    the same as if it had been computed up front.
    """

    @staticmethod
    def __new__(cls, codes: TableCodes, scale: Tensor) -> DeferredValue:
        return Tensor._make_wrapper_subclass(cls, codes.shape, dtype=torch.float32, device=codes.table.device)

    def __init__(self, codes: TableCodes, scale: Tensor) -> None:
        self._table_codes, self._scale, self._dense = codes, scale, None

    def dense(self) -> Tensor:
        if self._dense is None:
            self._dense = self._table_codes.take(self._table_codes.table.to(torch.float32).mul_(self._scale))
        return self._dense

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map

        def unwrap(x):
            return x.dense() if isinstance(x, DeferredValue) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

    def __repr__(self) -> str:
        return repr(self.dense())

