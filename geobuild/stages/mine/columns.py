"""Compact per-row string columns of the gallery for mining.

A gallery of N photos is held by every mining process; Python strings per row cost about a
hundred bytes each and would make that memory grow with N far faster than the index. Here a
column is int32 codes into its distinct values, and equality with query strings is exact (by
code, after an exact lookup of the query strings among the distinct values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: the code of a gallery row whose value is null (never equal to a query's code)
NULL = -1
#: the code of a query string that no gallery row has
ABSENT = -2


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(writable int32 codes, ``NULL`` for a null; the distinct values as an Arrow string array)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if col.type != pa.string():
        col = pc.cast(col, pa.string())
    enc = pc.dictionary_encode(col)
    codes = np.array(enc.indices.fill_null(NULL).to_numpy(zero_copy_only=False), dtype=np.int32)
    return codes, enc.dictionary


@dataclass
class Codes:
    """A string column as int32 codes (``NULL`` for a null) into its distinct ``values``."""

    codes: np.ndarray
    values: pa.Array

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array) -> "Codes":
        return cls(*_encode(column))

    def lookup(self, strings: Iterable[Any]) -> np.ndarray:
        """int32 codes of ``strings`` (str), ``ABSENT`` where no row has that value."""
        arr = pa.array(list(strings), pa.string())
        found = pc.index_in(arr, value_set=self.values)
        return found.fill_null(ABSENT).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The values of ``rows`` as a Python object array (None for nulls)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty(0, dtype=object)
        codes = self.codes[rows]
        out = np.empty(rows.size, dtype=object)
        ok = codes >= 0
        out[ok] = np.asarray(self.values.take(pa.array(codes[ok])).to_pylist(), dtype=object) if ok.any() else []
        out[~ok] = None
        return out


@dataclass
class TextCodes:
    """A location-text column that mining fills in as it goes (reverse-geocoded text for rows
    without their own): int32 codes per row into a growing list of distinct values."""

    codes: np.ndarray
    vocab: list[Any]
    _index: dict[Any, int] = field(default_factory=dict, repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array | None, n: int) -> "TextCodes":
        """Own text of each row ('' where empty or null)."""
        if column is None:
            return cls(np.zeros(n, dtype=np.int32), [""], {"": 0})
        codes, values = _encode(pc.cast(column, pa.string()).fill_null(""))
        vocab = values.to_pylist()
        return cls(codes, vocab, {v: i for i, v in enumerate(vocab)})

    def has_text(self) -> np.ndarray:
        """Rows whose value is not ''."""
        empty = self._index.get("")
        return np.ones(self.codes.size, dtype=bool) if empty is None else self.codes != empty

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Values of ``rows`` (object array)."""
        if self._array is None or self._array.size != len(self.vocab):
            self._array = np.empty(len(self.vocab), dtype=object)
            self._array[:] = self.vocab
        return self._array[self.codes[np.asarray(rows, dtype=np.int64)]]

    def set(self, rows: np.ndarray, values: Iterable[Any]) -> None:
        """Give ``rows`` the ``values`` (one per row)."""
        codes = np.empty(len(rows), dtype=np.int32)
        for i, v in enumerate(values):
            c = self._index.get(v)
            if c is None:
                c = self._index[v] = len(self.vocab)
                self.vocab.append(v)
            codes[i] = c
        self.codes[np.asarray(rows, dtype=np.int64)] = codes
