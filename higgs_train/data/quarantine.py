"""Rows set aside with a reason, by the stage that rejected them (validation, audio preprocessing, ...).

A bad row never stops a job and is never silently dropped: it lands here, ``quarantine.parquet`` is written next
to the run's outputs, and ``counts()`` feeds the summary/metrics. Records are plain (id, row_index, stage, reason)
so Ray actors can return them as dicts and the driver merges them with ``extend``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from higgs_train.data.plain_parquet import read_plain_parquet

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected row: which (id, position in its manifest), where (stage) and why (reason)."""

    id: str
    row_index: int
    stage: str
    reason: str


class Quarantine:
    """An ordered collection of ``QuarantineRecord`` with Parquet persistence."""

    def __init__(self, records: Iterable[Any] = ()) -> None:
        self._records: list[QuarantineRecord] = []
        self.extend(records)

    def add(self, id: str, index: int, stage: str, reason: str) -> None:
        self._records.append(QuarantineRecord(str(id), int(index), str(stage), str(reason)))

    def extend(self, records: Iterable[Any]) -> None:
        """Append records: ``QuarantineRecord``s, mappings with keys id, row_index (or index), stage, reason (as
        actors return them over Ray), or any object with those attributes (e.g. preprocess.RowFailure)."""
        for rec in records:
            if isinstance(rec, QuarantineRecord):
                self._records.append(rec)
            elif isinstance(rec, Mapping):
                index = rec["row_index"] if "row_index" in rec else rec["index"]
                self.add(rec["id"], index, rec["stage"], rec["reason"])
            else:
                self.add(rec.id, rec.row_index, rec.stage, rec.reason)

    @property
    def records(self) -> list[QuarantineRecord]:
        return list(self._records)

    def counts(self) -> dict[str, int]:
        """Number of quarantined rows per stage."""
        return dict(Counter(r.stage for r in self._records))

    def write(self, path: str | Path) -> Path:
        """Write ``quarantine.parquet`` (also when empty, so "nothing quarantined" is visible); atomic rename."""
        dst = Path(path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([asdict(r) for r in self._records], schema=QUARANTINE_SCHEMA)
        tmp = dst.with_name(dst.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(dst)
        return dst

    @classmethod
    def read(cls, path: str | Path) -> Quarantine:
        return cls(read_plain_parquet(path, schema=QUARANTINE_SCHEMA).to_pylist())

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[QuarantineRecord]:
        return iter(self._records)
