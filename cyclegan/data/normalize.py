"""`data.normalize`: how a sample's values map onto the networks' [-1, 1] (the full range of its
integer type, a fixed window, or its own percentiles), and back onto the values of a type."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cyclegan.errors import DataError

NORMALIZE_FORMS = "dtype, range:LO,HI or percentile:P1,P99"


@dataclass(frozen=True)
class Normalize:
    """How a sample's values map onto [-1, 1]: the full range of its integer type (`dtype`), a
    fixed window (`range`, e.g. CT Hounsfield units -1000,1000) or its own percentiles
    (`percentile`). Values outside the window are clipped."""

    kind: str = "dtype"
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Normalize:
        """`dtype`, `range:LO,HI` or `percentile:P1,P99`; a DataError saying which forms exist."""
        if spec == "dtype":
            return cls()
        match = re.fullmatch(r"(range|percentile):\s*([-+.\deE]+)\s*,\s*([-+.\deE]+)", spec.strip())
        try:
            kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
        except (AttributeError, ValueError):
            raise DataError(f"{spec!r} is not one of {NORMALIZE_FORMS}") from None
        if not low < high or (kind == "percentile" and not 0 <= low < high <= 100):
            raise DataError(f"{spec!r}: needs LO < HI" + (" within 0..100" if kind == "percentile" else ""))
        return cls(kind, low, high)

    def __str__(self) -> str:
        """The spec it was parsed from, exactly (a translation's record of settings compares these)."""
        def number(x: float) -> str:
            return str(int(x)) if x.is_integer() else repr(x)
        return self.kind if self.kind == "dtype" else f"{self.kind}:{number(self.low)},{number(self.high)}"

    @property
    def is_default(self) -> bool:
        return self.kind == "dtype"

    def window(self, array: np.ndarray, name: str = "sample", setting: str = "data.normalize") -> tuple[float, float]:
        """The values that map to -1 and 1 for this sample (`setting`: how the caller named this
        normalisation, for the message when float data has no type range)."""
        if self.kind == "range":
            return self.low, self.high
        if self.kind == "percentile":
            low, high = (float(v) for v in np.percentile(array, (self.low, self.high)))
            return (low, high) if high > low else (low, low + 1.0)  # a flat image maps to -1
        return type_range(array.dtype, name, setting)

    def to_unit(self, array: np.ndarray, name: str = "sample", setting: str = "data.normalize") -> np.ndarray:
        """An H x W x C array -> float32 in [-1, 1] (computed in float64)."""
        low, high = self.window(array, name, setting)
        unit = (array.astype(np.float64) - low) / (high - low) * 2.0 - 1.0
        return np.clip(unit, -1.0, 1.0).astype(np.float32)


def type_range(dtype: np.dtype, name: str = "sample", setting: str = "data.normalize") -> tuple[float, float]:
    """The full range of an integer type; float data has none (`setting` names the knob to set)."""
    if not np.issubdtype(dtype, np.integer):
        raise DataError(f"{name}: {dtype} data has no type range to normalise by: set {setting} to "
                        "range:LO,HI (a fixed window) or percentile:P1,P99")
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def from_unit(unit: np.ndarray, dtype: np.dtype, window: tuple[float, float]) -> np.ndarray:
    """[-1, 1] floats -> values of `dtype` on `window`: the inverse of `Normalize.to_unit`
    (integers rounded and clipped to their type)."""
    low, high = window
    return cast((unit.astype(np.float64) + 1.0) / 2.0 * (high - low) + low, dtype)


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values as `dtype`: rounded and clipped to an integer type's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
