"""sha256 of a data file, computed in a background thread while the table is parsed."""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from pathlib import Path

import numpy as np

from mse_train.errors import DataError


class Digest:
    """sha256 of a file, computed in a thread; `result()` waits for it.

    One pass over the file's bytes in a thread: sha256, and optionally delimiter and
    quote counts.

    hashlib and numpy release the GIL on big blocks, so the pass overlaps with other
    work. The counts catch rows with extra fields, which pandas drops silently when it
    reads only some of the columns. The hash is of the file's bytes (CSV, gzip or
    Parquet alike); the counts of a .gz file are of its decompressed text.
    """

    def __init__(self, path: Path, delimiter: str = ",", count: bool = False) -> None:
        self._value = ""
        self.delimiters = 0
        self.quotes = 0
        self._error: Exception | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, args=(path, delimiter, count), daemon=True
        )
        self._thread.start()

    @classmethod
    def known(cls, value: str) -> Digest:
        """A digest already computed (the data cache remembers them): nothing is read."""
        digest = cls.__new__(cls)
        digest._value, digest.delimiters, digest.quotes = value, 0, 0
        digest._error, digest._thread = None, None
        return digest

    def _run(self, path: Path, delimiter: str, count: bool) -> None:
        h = hashlib.sha256()
        compressed = path.suffix.lower() == ".gz"
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    if count and not compressed:
                        self._count(block, delimiter)
            if count and compressed:
                with gzip.open(path, "rb") as g:
                    while block := g.read(1 << 22):
                        self._count(block, delimiter)
        except (OSError, EOFError, zlib.error) as exc:  # EOFError: a truncated .gz, which the parse names
            self._error = exc
        self._value = h.hexdigest()

    def _count(self, block: bytes, delimiter: str) -> None:
        data = np.frombuffer(block, dtype=np.uint8)
        self.delimiters += int(np.count_nonzero(data == ord(delimiter)))
        self.quotes += int(np.count_nonzero(data == ord('"')))

    def done(self) -> bool:
        """Whether `result()` would return at once."""
        return self._thread is None or not self._thread.is_alive()

    def result(self) -> str:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise DataError(f"cannot read: {self._error}")
        return self._value
