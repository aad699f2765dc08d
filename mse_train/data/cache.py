"""A binary cache of parsed tables: each column one raw little-endian file, memory-mapped on read.

Parsing a 1M-row CSV takes seconds; reading its columns back from here takes tens of
milliseconds. An entry is keyed by the sha256 of the data file's bytes and by every
setting that changes what the parse gives (see `ingest.settings`), so a changed file or
setting is simply another key and an entry is never updated in place.

The cache folder (`data.cache`; for `auto`, $MSE_TRAIN_CACHE_DIR, else
$XDG_CACHE_HOME/mse-train, else ~/.cache/mse-train) holds:

  tables/KEY/manifest.json  what the entry holds: rows, header, columns, their CRC-32s
  tables/KEY/N.bin          column N: float32 numbers, or int32 category codes (-1: empty)
  files/ID.json             a data file's stat signature and sha256 (`known_sha256`)
  building/*                entries being written, and damaged ones on their way out

An entry is checked before it is used (the manifest, its format version, key and source
hash, each file's size, dtype and CRC-32, category codes within the vocabulary); one that
fails is removed and built again, never trusted. An entry is written in its own folder
under building/ and published by renaming that folder into tables/: two processes that
build the same entry both write, the first rename wins, and the other's folder is
discarded, so a reader never sees half an entry. Nothing is fsynced: an entry cut short
by a crash fails its checks and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from mse_train.errors import DataError

FORMAT = 1  # bump whenever the layout or the meaning of an entry changes
ENV = "MSE_TRAIN_CACHE_DIR"
# A file modified less than this before it was hashed may change again within the same
# timestamp tick without its stat changing (git's "racy clean" problem); FAT's mtime
# ticks are 2 s. Such a file is hashed again next time, until it is older.
RACY_NS = 2_000_000_000
STALE_BUILD_S = 3600  # a building/ folder this old was left by a process that died
NUMBER, CATEGORY = "<f4", "<i4"
_SHA = re.compile("[0-9a-f]{64}")
_warned: set[str] = set()  # cache folders already warned about in this process


def default_root() -> Path:
    """Where `data.cache: auto` keeps the cache."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mse-train"


def open_store(setting: str, notes: list[str], strict: bool = True) -> Store | None:
    """The cache that `data.cache` names; None when it is `off` or cannot be used.

    A folder that cannot be written is, for `auto`, a note (once per process) and no
    cache: most users never chose it. A folder the user named is an error (exit 2),
    unless `strict` is False: eval reading with the setting a checkpoint was trained
    with, perhaps on another machine, only notes it.
    """
    if setting == "off":
        return None
    explicit = setting != "auto"
    root = Path(setting) if explicit else default_root()
    try:
        return Store.open(root)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if explicit and strict:
            raise DataError(
                f"`data.cache`: {root} cannot be used as the data cache folder: {reason}",
                ["name a folder you can write to, or set `data.cache: auto` (or `off`)"],
            ) from None
        if str(root) not in _warned:
            _warned.add(str(root))
            notes.append(f"the data cache folder {root} cannot be written ({reason}); tables are parsed anew")
        return None


class Damaged(Exception):
    """An entry that does not check out: why, in a few words."""


@dataclass
class Entry:
    """A table read back from the cache: what `table.Table` needs besides the file itself.

    `columns` holds numbers as float32 and categories as int32 codes into
    `vocabularies[name]` (-1: empty), copied into memory or, read with `mapped`,
    memory-mapped (data/stream.py reads those in blocks).
    """

    header: list[str]
    rows: int
    columns: dict[str, np.ndarray]
    vocabularies: dict[str, list[str]]
    row_groups: tuple[int, ...] | None

    @property
    def categorical(self) -> list[str]:
        return list(self.vocabularies)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, names: Sequence[str], categorical: Sequence[str]) -> Entry:
        """Columns of a parsed frame in this form, in memory (the inverse of `frame`):
        numbers as they are, categories as codes into a vocabulary in order of appearance."""
        columns: dict[str, np.ndarray] = {}
        vocabularies: dict[str, list[str]] = {}
        for name in names:
            if name in categorical:
                codes, uniques = pd.factorize(frame[name].to_numpy(dtype=object), use_na_sentinel=True)
                columns[name], vocabularies[name] = codes, [str(v) for v in uniques]
            else:
                columns[name] = frame[name].to_numpy()
        return cls(list(names), len(frame), columns, vocabularies, None)

    @property
    def frame(self) -> pd.DataFrame:
        """The columns as the parser gives them: categories as Python strings, NaN where empty."""
        data: dict[str, Any] = {}
        for name, values in self.columns.items():
            vocab = self.vocabularies.get(name)
            if vocab is None:
                data[name] = values
                continue
            # Code -1 picks the last item: NaN, as the parser leaves an empty cell.
            # dtype object as the parser gives (pandas would otherwise infer its str dtype).
            data[name] = pd.Series(np.array([*vocab, np.nan], dtype=object)[values], dtype=object, copy=False)
        return pd.DataFrame(data, index=pd.RangeIndex(self.rows), copy=False)


@dataclass
class Store:
    """One cache folder; `notes` collects what a user should hear (an entry rebuilt)."""

    root: Path
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path) -> Store:
        """The folder, created if needed and proved writable (OSError when it is not)."""
        for sub in ("tables", "files", "building"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix="probe-", dir=root / "building"))
        store = cls(root)
        store._remove_stale_builds()
        return store

    def _remove_stale_builds(self) -> None:
        now = time.time()
        for folder in (self.root / "building").iterdir():
            try:
                if now - folder.lstat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue  # another process removed it first

    # ------------------------------------------------------------- file hashes
    def _record(self, path: Path) -> Path:
        return self.root / "files" / (hashlib.sha256(str(path).encode()).hexdigest() + ".json")

    def known_sha256(self, path: Path, stat: os.stat_result) -> str | None:
        """The file's sha256 as recorded when its stat signature was the same, else None.

        Hashing an 80 MB file takes 0.1-0.3 s, more than reading its columns from the
        cache, so a file is hashed again only when its size, mtime, ctime, inode or device
        changed since it was last hashed (git's index does the same).
        """
        try:
            record = json.loads(self._record(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("path") != str(path):
            return None
        sha = record.get("sha256")
        if (
            record.get("signature") != stat_signature(stat)
            or not isinstance(sha, str)
            or not _SHA.fullmatch(sha)
        ):
            return None
        return sha

    def remember_sha256(self, path: Path, before: os.stat_result, sha: str, started_ns: int) -> None:
        """Record a hash, unless the file changed while it was hashed or changed too recently."""
        try:
            after = path.stat()
        except OSError:
            return
        if stat_signature(after) != stat_signature(before):
            return
        if max(before.st_mtime_ns, before.st_ctime_ns) > started_ns - RACY_NS:
            return
        record = {"path": str(path), "signature": stat_signature(before), "sha256": sha}
        with contextlib.suppress(OSError):  # only a missed shortcut: the file is hashed again next time
            _write_atomic(self._record(path), json.dumps(record))

    # ----------------------------------------------------------------- entries
    def load(
        self, key: str, sha: str, settings: dict[str, Any], columns: Sequence[str], mapped: bool = False
    ) -> Entry | None:
        """The entry under `key`, checked; None when there is none or it was damaged (then removed).

        `mapped`: the columns stay memory-mapped instead of being copied into memory.
        """
        folder = self.root / "tables" / key
        if not folder.exists():
            return None
        try:
            return _read_entry(folder, key, sha, settings, columns, mapped)
        except (Damaged, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.notes.append(f"the data cache entry {folder} did not check out ({why}); it was rebuilt")
            self._discard(folder)
            return None

    def _discard(self, folder: Path) -> None:
        """Rename the folder out of tables/ (atomic, so readers see it or nothing), then delete it."""
        try:
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.root / "building"))
        except OSError:
            return  # not writable: the entry stays, and is checked (and refused) on every read
        with contextlib.suppress(OSError):  # already gone: another process discarded it first
            os.replace(folder, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)

    def builder(self, columns: Sequence[str], categorical: Sequence[str]) -> Builder:
        return Builder(self.root, list(columns), set(categorical))


def stat_signature(stat: os.stat_result) -> list[int]:
    """What says a file is unchanged without reading it: size, mtime, ctime, inode, device."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _write_atomic(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def key(sha: str, settings: dict[str, Any]) -> str:
    """The entry's name: the file's bytes, the parse settings and this format's version."""
    text = json.dumps({"format": FORMAT, "sha256": sha, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------- writing
class Builder:
    """Columns appended chunk by chunk into a folder of their own, then published at once."""

    def __init__(self, root: Path, columns: list[str], categorical: set[str]) -> None:
        self.root, self.columns, self.categorical = root, columns, categorical
        self.folder = Path(tempfile.mkdtemp(prefix="entry-", dir=root / "building"))
        self._files: list[IO[bytes]] = []
        self._crcs = [0] * len(columns)
        self._counts = [0] * len(columns)
        self._vocab: dict[int, dict[str, int]] = {i: {} for i, c in enumerate(columns) if c in categorical}
        try:
            for i in range(len(columns)):
                self._files.append(open(self.folder / f"{i}.bin", "wb"))  # noqa: SIM115 (closed in close())
        except BaseException:
            self.discard()
            raise

    def add(self, frame: pd.DataFrame) -> None:
        """Append rows: numbers as float32, categories as codes into a growing vocabulary."""
        for i, name in enumerate(self.columns):
            if i in self._vocab:
                data = self._codes(i, frame[name].to_numpy(dtype=object)).astype(CATEGORY, copy=False)
            else:
                data = np.ascontiguousarray(frame[name].to_numpy(), dtype=NUMBER)
            raw = data.tobytes()
            self._files[i].write(raw)
            self._crcs[i] = zlib.crc32(raw, self._crcs[i])
            self._counts[i] += len(data)

    def _codes(self, i: int, cells: np.ndarray) -> np.ndarray:
        codes, uniques = pd.factorize(cells, use_na_sentinel=True)
        vocab = self._vocab[i]
        for value in uniques:
            if not isinstance(value, str):  # never from the readers; refuse rather than guess
                raise TypeError(f"category value {value!r} is not text")
        ids = np.array([vocab.setdefault(v, len(vocab)) for v in uniques], dtype=np.int64)
        out = np.full(len(codes), -1, dtype=np.int64)
        present = codes >= 0
        out[present] = ids[codes[present]]
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def publish(
        self,
        key: str,
        header: list[str],
        sha: str,
        settings: dict[str, Any],
        row_groups: Sequence[int] | None,
    ) -> None:
        """Write the manifest and rename the folder into tables/.

        When another process published the same key first, its entry stands and this
        one is discarded: both were made from the same bytes with the same settings.
        """
        self.close()
        rows = self._counts[0] if self._counts else 0
        if any(count != rows for count in self._counts):
            self.discard()
            raise ValueError(f"columns of unequal length {self._counts}")
        specs = []
        for i, name in enumerate(self.columns):
            spec: dict[str, Any] = {"name": name, "file": f"{i}.bin", "crc32": self._crcs[i]}
            if i in self._vocab:
                spec.update(kind="category", dtype=CATEGORY, vocabulary=list(self._vocab[i]))
            else:
                spec.update(kind="number", dtype=NUMBER)
            specs.append(spec)
        manifest = {
            "format": FORMAT,
            "key": key,
            "sha256": sha,
            "settings": settings,
            "rows": rows,
            "header": header,
            "row_groups": None if row_groups is None else list(row_groups),
            "columns": specs,
        }
        try:
            (self.folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
            os.rename(self.folder, self.root / "tables" / key)
        except OSError:
            if not (self.root / "tables" / key).exists():
                self.discard()
                raise
            self.discard()  # another process published first


# ------------------------------------------------------------------- reading
def _need(ok: bool, why: str) -> None:
    if not ok:
        raise Damaged(why)


def _read_entry(
    folder: Path, key: str, sha: str, settings: dict[str, Any], columns: Sequence[str], mapped: bool
) -> Entry:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Damaged("it has no manifest.json") from None
    except (ValueError, UnicodeDecodeError):
        raise Damaged("its manifest.json is not valid JSON") from None
    _need(isinstance(manifest, dict), "its manifest.json is not a JSON object")
    version = manifest.get("format")
    _need(version == FORMAT, f"written by cache format {version!r}; this mse-train reads format {FORMAT}")
    _need(manifest.get("key") == key, "its manifest names another key")
    _need(manifest.get("sha256") == sha, "made from other bytes: its sha256 differs from the file's")
    _need(manifest.get("settings") == settings, "made with other settings")
    rows, header, groups, specs = (manifest.get(k) for k in ("rows", "header", "row_groups", "columns"))
    _need(isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1, f"bad row count {rows!r}")
    assert isinstance(rows, int)
    _need(isinstance(header, list) and all(isinstance(h, str) for h in header), "bad header")
    _need(
        groups is None
        or (
            isinstance(groups, list)
            and all(isinstance(g, int) and g >= 0 for g in groups)
            and sum(groups) == rows
        ),
        "bad row groups",
    )
    _need(
        isinstance(specs, list)
        and [s.get("name") if isinstance(s, dict) else None for s in specs] == list(columns),
        "other columns",
    )
    assert isinstance(specs, list)
    data: dict[str, np.ndarray] = {}
    vocabularies: dict[str, list[str]] = {}
    for i, spec in enumerate(specs):
        name = str(spec["name"])
        _need(spec.get("file") == f"{i}.bin", f"column `{name}`: bad file name")
        kind, dtype = spec.get("kind"), spec.get("dtype")
        expected = {"number": NUMBER, "category": CATEGORY}.get(str(kind))
        _need(
            expected is not None and dtype == expected, f"column `{name}`: kind {kind!r} with dtype {dtype!r}"
        )
        values = _column(folder / f"{i}.bin", name, np.dtype(str(dtype)), rows, spec.get("crc32"), mapped)
        data[name] = values
        if kind == "number":
            continue
        vocab = spec.get("vocabulary")
        _need(
            isinstance(vocab, list)
            and all(isinstance(v, str) for v in vocab)
            and len(set(vocab)) == len(vocab),
            f"column `{name}`: bad vocabulary",
        )
        assert isinstance(vocab, list)
        low, high = _code_range(values)
        _need(low >= -1 and high < len(vocab), f"column `{name}`: codes out of range")
        vocabularies[name] = list(vocab)
    return Entry(list(header), rows, data, vocabularies, None if groups is None else tuple(groups))


SCAN_ROWS = 1 << 22  # rows per slice when a mapped column is checked: 16 MB at a time


def _code_range(values: np.ndarray) -> tuple[int, int]:
    """The smallest and largest code, a slice at a time (a mapped column stays on disk)."""
    low, high = 0, -1
    for start in range(0, len(values), SCAN_ROWS):
        part = values[start : start + SCAN_ROWS]
        low, high = min(low, int(part.min())), max(high, int(part.max()))
    return low, high


def _column(path: Path, name: str, dtype: np.dtype[Any], rows: int, crc: Any, mapped: bool) -> np.ndarray:
    """A column file memory-mapped, its size and CRC-32 checked, copied into memory unless `mapped`.

    The copy means a file removed or replaced later cannot change (or, truncated, crash)
    a run that already read it. A mapped column relies on entries never being changed in
    place: a discarded entry is renamed away and unlinked, which leaves an open mapping
    intact on POSIX systems.
    """
    size = path.stat().st_size
    _need(size == rows * dtype.itemsize, f"column `{name}`: {size} bytes, not {rows} x {dtype.itemsize}")
    view = np.memmap(path, dtype=dtype, mode="r", shape=(rows,))
    crc32 = 0
    step = SCAN_ROWS * dtype.itemsize
    raw = view.data.cast("B")
    for start in range(0, len(raw), step):
        crc32 = zlib.crc32(raw[start : start + step], crc32)
    _need(crc32 == crc, f"column `{name}`: its CRC-32 does not match")
    return view if mapped else np.array(view)
