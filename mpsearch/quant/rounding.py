"""Rounding modes, each written once for floats (the quantizers' rounding part) and for integer right
shifts (the NNA's requantisation), so a QuantConfig's `rounding` option and a hardware profile's
numerics name the same modes from one registry.

Operators and tensor methods only, and no imports of torch or numpy: the integer rules run on numpy
int64 arrays (the reference executor, which imports no torch) and torch int64 tensors alike, and `>>`
is an arithmetic (floor) shift in both.
"""

from __future__ import annotations

from mpsearch.registry import Registry


def rounding_half(shift):
    """2^(shift-1), and 0 for shift 0 (nothing to round): what a shift by `shift` rounds at."""
    return ((shift * 0 + 1) << shift) >> 1


class RoundingMode:
    """Round to nearest; a subclass says where ties go.

    round(x): a float tensor's nearest integers (as floats). round_(x): the same in place, for a
    tensor no one else holds. shift(x, shift, half): x / 2^shift rounded, for integer arrays x and
    shift >= 0, with half = rounding_half(shift). shift_(x, shift, half): the same, in place where the
    mode can (x is an array no one else holds).
    """

    @staticmethod
    def round(x):
        raise NotImplementedError

    @classmethod
    def round_(cls, x):
        return x.copy_(cls.round(x))

    @staticmethod
    def shift(x, shift, half):
        raise NotImplementedError

    @classmethod
    def shift_(cls, x, shift, half):
        return cls.shift(x, shift, half)


ROUNDINGS: Registry[type[RoundingMode]] = Registry("rounding mode")


@ROUNDINGS.register("half_even")
class RoundHalfEven(RoundingMode):
    """Ties to even (torch.round, numpy.rint): no bias on average."""

    @staticmethod
    def round(x):
        return x.round()

    @classmethod
    def round_(cls, x):
        return x.round_()

    @staticmethod
    def shift(x, shift, half):
        floor = x >> shift
        rest = x - (floor << shift)
        up = (rest > half) | ((rest == half) & (half > 0) & ((floor & 1) == 1))
        return floor + up * 1


@ROUNDINGS.register("half_away")
class RoundHalfAway(RoundingMode):
    """Ties away from zero (C's round(), common in fixed-point hardware)."""

    @staticmethod
    def round(x):
        # floor(|x| + 0.5) is wrong just below a tie (0.49999997 + 0.5 rounds up to 1.0 in float32).
        trunc = x.trunc()
        tie = (x - trunc).abs() == 0.5
        return (trunc + x.sign()).where(tie, x.round())

    @staticmethod
    def shift(x, shift, half):
        magnitude = (abs(x) + half) >> shift
        return magnitude - ((x < 0) * 2) * magnitude


@ROUNDINGS.register("half_up")
class RoundHalfUp(RoundingMode):
    """Ties toward +inf: `(x + 2^(s-1)) >> s`, the cheapest rounding shift in hardware."""

    @staticmethod
    def round(x):
        # floor(x + 0.5) is wrong just below a tie, as for half_away.
        floor = x.floor()
        return (floor + 1).where(x - floor == 0.5, x.round())

    @staticmethod
    def shift(x, shift, half):
        return (x + half) >> shift

    @staticmethod
    def shift_(x, shift, half):
        if not isinstance(half, int) or half:  # a caller that added it already passes 0
            x += half
        x >>= shift
        return x
