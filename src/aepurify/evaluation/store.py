"""Result rows in SQLite: one row per (dataset, classifier, purifier, threat_model, attack, norm,
eps), committed as soon as it is computed, so a killed run resumes where it stopped and loses
nothing. Each row also keeps which test images survived (one byte per image), which the adaptive
protocol needs for its per-example worst case.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import AepurifyError

# Row conventions every stage reads: the clean-accuracy row of a defense has attack, norm and
# threat model ``none``; the undefended classifier is purifier ``none``; the attacks the
# gradient-masking checks add are labelled ``sanity-...``.
CLEAN = "none"
SANITY_PREFIX = "sanity-"

COLUMNS = ("dataset", "classifier", "purifier", "threat_model", "attack", "norm", "eps", "n",
           "accuracy", "seconds")
KEY = COLUMNS[:7]

F = TypeVar("F", bound=Callable[..., Any])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    dataset TEXT NOT NULL, classifier TEXT NOT NULL, purifier TEXT NOT NULL,
    threat_model TEXT NOT NULL, attack TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL,
    n INTEGER NOT NULL, accuracy REAL NOT NULL, seconds REAL NOT NULL,
    spec_hash TEXT NOT NULL, correct BLOB NOT NULL, details TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (dataset, classifier, purifier, threat_model, attack, norm, eps)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (
    row_key TEXT PRIMARY KEY, shape TEXT NOT NULL, data BLOB NOT NULL
);
"""


def eps_key(eps: float) -> float:
    """Epsilon as stored: rounded so that 8/255 written twice is the same key."""
    return round(float(eps), 10)


@dataclass
class ResultRow:
    """One evaluated cell of the grid.

    Attributes:
        dataset, classifier, purifier, threat_model, attack, norm: the row's labels
            (``attack`` ``none``, ``norm`` ``none``, ``eps`` 0 and ``threat_model`` ``none`` for
            clean accuracy).
        eps: budget on the [0, 1] pixel scale.
        n: images evaluated.
        accuracy: fraction classified correctly, in [0, 1].
        seconds: wall-clock seconds to craft and classify the examples.
        correct: per-image correctness, bool array (n,).
        spec_hash: hash of everything that determines the row (models, settings, seed).
        details: extra facts (EOT samples, surrogate, attack options, ...).
    """

    dataset: str
    classifier: str
    purifier: str
    threat_model: str
    attack: str
    norm: str
    eps: float
    n: int
    accuracy: float
    seconds: float
    correct: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    spec_hash: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.dataset, self.classifier, self.purifier, self.threat_model, self.attack,
                self.norm, eps_key(self.eps))

    def csv_record(self) -> dict[str, Any]:
        rec = {c: getattr(self, c) for c in COLUMNS}
        rec["eps"] = eps_key(self.eps)
        rec["accuracy"] = round(self.accuracy, 6)
        rec["seconds"] = round(self.seconds, 3)
        return rec


def _guarded(method: F) -> F:
    """Turn SQLite's errors inside a store method (a page found corrupt only when read) into
    one line that names the file; the file itself is left as it is."""

    @functools.wraps(method)
    def wrapper(self: ResultStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self.unusable(exc) from None

    return wrapper  # type: ignore[return-value]


class ResultStore:
    """SQLite-backed result rows (``DIR/results.db``).

    Opening checks the whole file (SQLite's ``quick_check``), so a file whose pages are corrupt
    is refused before a run writes anything beside it.

    Raises:
        AepurifyError: the file exists but is not a readable results database, or a page of it
            turns out corrupt later (one line naming the file; the file is kept as it is).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            verdict = self._db.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict[0] if verdict else '?'}")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise self.unusable(exc) from None

    def unusable(self, exc: BaseException) -> AepurifyError:
        """The one-line error for a results file SQLite cannot use."""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return AepurifyError(f"{self.path} is not a usable results database ({first}); move it "
                             "aside to start the run afresh, or restore it from a copy")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_guarded
    def has(self, key: tuple, spec_hash: str) -> bool:
        """True if the row ``key`` was finished with exactly this spec."""
        cur = self._db.execute(
            "SELECT 1 FROM results WHERE dataset=? AND classifier=? AND purifier=? AND "
            "threat_model=? AND attack=? AND norm=? AND eps=? AND spec_hash=?",
            (*key[:6], eps_key(key[6]), spec_hash))
        return cur.fetchone() is not None

    @_guarded
    def put(self, row: ResultRow) -> None:
        """Insert or replace a row and commit at once."""
        blob = np.asarray(row.correct, dtype=np.uint8).tobytes()
        self._db.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (*row.key, row.n, row.accuracy, row.seconds, row.spec_hash, blob,
             json.dumps(row.details, sort_keys=True, default=str),
             time.strftime("%Y-%m-%dT%H:%M:%S")))
        self._db.commit()

    @_guarded
    def rows(self, keys: Iterable[tuple] | None = None) -> list[ResultRow]:
        """All rows, or those with the given keys (in that order, missing ones skipped)."""
        cur = self._db.execute(
            "SELECT dataset, classifier, purifier, threat_model, attack, norm, eps, n, accuracy, "
            "seconds, correct, spec_hash, details FROM results")
        found = {}
        for rec in cur.fetchall():
            row = ResultRow(*rec[:10], correct=np.frombuffer(rec[10], dtype=np.uint8).astype(bool),
                            spec_hash=rec[11], details=json.loads(rec[12]))
            found[row.key] = row
        if keys is None:
            return list(found.values())
        return [found[k] for k in keys if k in found]

    @_guarded
    def put_examples(self, key: tuple, images: np.ndarray) -> None:
        """Keep a few adversarial images of a row (float16, (k, C, H, W) in [0, 1]) for the
        report's example figures."""
        arr = np.asarray(images, dtype=np.float16)
        self._db.execute("INSERT OR REPLACE INTO examples VALUES (?, ?, ?)",
                         (json.dumps([*key[:6], eps_key(key[6])]), json.dumps(arr.shape),
                          arr.tobytes()))
        self._db.commit()

    @_guarded
    def examples(self, key: tuple) -> np.ndarray | None:
        """The stored adversarial images of a row, float32 (k, C, H, W), or None."""
        cur = self._db.execute("SELECT shape, data FROM examples WHERE row_key=?",
                               (json.dumps([*key[:6], eps_key(key[6])]),))
        rec = cur.fetchone()
        if rec is None:
            return None
        return np.frombuffer(rec[1], dtype=np.float16).reshape(json.loads(rec[0])).astype(
            np.float32)

    def merge(self, other: str | Path) -> int:
        """Copy every row and kept example image of the results file ``other`` into this store,
        in one transaction (rows of the same key replaced: the other file's are newer).

        Returns:
            The number of rows copied.

        Raises:
            AepurifyError: ``other`` is not a readable results database.
        """
        ResultStore(other).close()  # a file killed before its tables were made gets them
        self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self._db:
                copied = self._db.execute(
                    "INSERT OR REPLACE INTO results SELECT * FROM other.results").rowcount
                self._db.execute("INSERT OR REPLACE INTO examples SELECT * FROM other.examples")
        except sqlite3.DatabaseError as exc:
            raise AepurifyError(f"cannot merge {other} into {self.path}: {exc}") from None
        finally:
            self._db.execute("DETACH DATABASE other")
        return copied

    @_guarded
    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self._db.commit()

    @_guarded
    def get_meta(self, key: str, default: Any = None) -> Any:
        cur = self._db.execute("SELECT value FROM meta WHERE key=?", (key,))
        rec = cur.fetchone()
        return json.loads(rec[0]) if rec else default


def check_results_file(path: str | Path) -> None:
    """Refuse an existing results file that SQLite cannot use (corrupt pages included), before
    a run trains or writes anything; a missing file is fine (nothing is created).

    Raises:
        AepurifyError: as :class:`ResultStore`.
    """
    if Path(path).exists():
        ResultStore(path).close()


def row_dict(row: ResultRow) -> dict[str, Any]:
    """A JSON-friendly dict of a row (per-image correctness left out)."""
    d = asdict(row)
    d.pop("correct")
    return d


# A distributed run's ranks each write their own results file in the output folder (never two
# writers on one SQLite file, which a network file system does not lock reliably); rank 0 merges
# them into results.db.
SHARD_PATTERN = "results-rank{rank}.db"


def shard_path(out_dir: str | Path, rank: int) -> Path:
    """The results file rank ``rank`` of a distributed run writes in ``out_dir``."""
    return Path(out_dir) / SHARD_PATTERN.format(rank=rank)


def merge_shards(store: ResultStore, out_dir: str | Path) -> int:
    """Merge every rank's results file in ``out_dir`` into ``store`` and delete it (after the
    merge committed, so a crash in between merges it again, to the same rows).

    Returns:
        The number of rows merged.
    """
    merged = 0
    for path in sorted(Path(out_dir).glob(SHARD_PATTERN.format(rank="*"))):
        merged += store.merge(path)
        path.unlink()
        for extra in ("-journal", "-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
    return merged
