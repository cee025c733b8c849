"""The archive's index: an embedded SQLite database of what was acknowledged.

Patient / study / series / instance, with the attributes a PACS list view needs.
The index is written after the file is durably in place and before Success is
answered, so it lists exactly what the archive has acknowledged; `check` compares
it with the files and `rebuild` recreates it from them.

All access goes through one connection on one thread: SQLite serialises writers
anyway, and the caller runs these methods off the event loop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_key TEXT PRIMARY KEY,      -- PatientID, or the name when it has none
    patient_id TEXT, patient_name TEXT, birth_date TEXT, sex TEXT
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT NOT NULL REFERENCES patients(patient_key),
    study_date TEXT, study_time TEXT, description TEXT, accession_number TEXT,
    study_id TEXT, referring_physician TEXT
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT, series_number INTEGER, description TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid TEXT NOT NULL, instance_number INTEGER, transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, received REAL NOT NULL, calling_ae TEXT
);
CREATE INDEX IF NOT EXISTS studies_by_patient ON studies(patient_key);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
"""


@dataclass(frozen=True, slots=True)
class Instance:
    """One stored instance and the header attributes the index keeps of it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str  # relative to the archive root
    size: int
    calling_ae: str
    received: float
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    study_id: str = ""
    referring_physician: str = ""
    series_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None

    @classmethod
    def from_header(
        cls,
        ds: Dataset | Mapping[str, str],
        *,
        transfer_syntax: str,
        path: str,
        size: int,
        calling_ae: str,
        received: float | None = None,
    ) -> Instance:
        """From a data set read up to its pixel data, or the HEADER_TAGS text values."""

        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        def number(keyword: str) -> int | None:
            value = ds.get(keyword)
            if value in (None, ""):
                return None
            try:
                return int(value)
            except (TypeError, ValueError):
                pass
            try:  # IS as text: "2.0" is 2, as pydicom reads it
                real = float(value)
            except (TypeError, ValueError):
                return None
            return int(real) if real.is_integer() else None

        return cls(
            sop_instance_uid=text("SOPInstanceUID"),
            sop_class_uid=text("SOPClassUID"),
            transfer_syntax=transfer_syntax,
            path=path,
            size=size,
            calling_ae=calling_ae,
            received=time.time() if received is None else received,
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            birth_date=text("PatientBirthDate"),
            sex=text("PatientSex"),
            study_uid=text("StudyInstanceUID"),
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
            study_description=text("StudyDescription"),
            accession_number=text("AccessionNumber"),
            study_id=text("StudyID"),
            referring_physician=text("ReferringPhysicianName"),
            series_uid=text("SeriesInstanceUID"),
            modality=text("Modality"),
            series_number=number("SeriesNumber"),
            series_description=text("SeriesDescription"),
            instance_number=number("InstanceNumber"),
        )

    @property
    def patient_key(self) -> str:
        return self.patient_id or self.patient_name


@dataclass(frozen=True, slots=True)
class StudyRow:
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    description: str
    accession_number: str
    modalities: str
    series: int
    instances: int
    size: int


#: What from_header reads, by tag (PS3.6 §6): all top-level, all in groups 0008-0020.
#: Typed here rather than looked up in pydicom's dictionary, so that receiving a
#: common data set never imports pydicom; a test checks them against it.
HEADER_TAGS: dict[int, str] = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00100020: "PatientID",
    0x00100010: "PatientName",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x0020000D: "StudyInstanceUID",
    0x00080020: "StudyDate",
    0x00080030: "StudyTime",
    0x00081030: "StudyDescription",
    0x00080050: "AccessionNumber",
    0x00200010: "StudyID",
    0x00080090: "ReferringPhysicianName",
    0x0020000E: "SeriesInstanceUID",
    0x00080060: "Modality",
    0x00200011: "SeriesNumber",
    0x0008103E: "SeriesDescription",
    0x00200013: "InstanceNumber",
}


_MAX_VARIABLES = 500  # below SQLite's smallest default SQLITE_MAX_VARIABLE_NUMBER (999)


def is_damage(error: BaseException) -> bool:
    """Whether SQLite cannot read an index file for its content (`index rebuild`
    sets such a file aside), rather than for a lock or an I/O error."""
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.OperationalError
    )


class Index:
    """The SQLite index of one archive."""

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss, as the Success it precedes promises.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error:  # not an index we can use (damaged, unreadable)
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def get_many(self, sop_instance_uids: list[str]) -> dict[str, str]:
        """The stored paths of those instances the archive has: one query per round."""
        found: dict[str, str] = {}
        for start in range(0, len(sop_instance_uids), _MAX_VARIABLES):
            chunk = sop_instance_uids[start : start + _MAX_VARIABLES]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(
                    f"SELECT sop_instance_uid, path FROM instances "
                    f"WHERE sop_instance_uid IN ({marks})",
                    chunk,
                ).fetchall()
            )
        return found

    def add(self, item: Instance) -> None:
        """Insert or replace one instance and upsert its patient, study and series."""
        self.add_many([item])

    def add_many(self, items: list[Instance]) -> None:
        """One transaction; each patient, study and series written once, as its last
        instance in `items` describes it (what writing them one by one would leave)."""
        patients = {i.patient_key: i for i in items}
        studies = {i.study_uid: i for i in items}
        series = {i.series_uid: i for i in items}
        db = self._db
        with self._transaction():
            db.executemany(
                "INSERT INTO patients VALUES (?, ?, ?, ?, ?) ON CONFLICT(patient_key) DO UPDATE "
                "SET patient_name=excluded.patient_name, birth_date=excluded.birth_date, "
                "sex=excluded.sex",
                [
                    (i.patient_key, i.patient_id, i.patient_name, i.birth_date, i.sex)
                    for i in patients.values()
                ],
            )
            db.executemany(
                "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(study_uid) "
                "DO UPDATE SET study_date=excluded.study_date, study_time=excluded.study_time, "
                "description=excluded.description, accession_number=excluded.accession_number, "
                "study_id=excluded.study_id, referring_physician=excluded.referring_physician",
                [
                    (
                        i.study_uid,
                        i.patient_key,
                        i.study_date,
                        i.study_time,
                        i.study_description,
                        i.accession_number,
                        i.study_id,
                        i.referring_physician,
                    )
                    for i in studies.values()
                ],
            )
            db.executemany(
                "INSERT INTO series VALUES (?, ?, ?, ?, ?) ON CONFLICT(series_uid) DO UPDATE SET "
                "modality=excluded.modality, series_number=excluded.series_number, "
                "description=excluded.description",
                [
                    (i.series_uid, i.study_uid, i.modality, i.series_number, i.series_description)
                    for i in series.values()
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.sop_instance_uid,
                        i.series_uid,
                        i.sop_class_uid,
                        i.instance_number,
                        i.transfer_syntax,
                        i.path,
                        i.size,
                        i.received,
                        i.calling_ae,
                    )
                    for i in items
                ],
            )

    def clear(self) -> None:
        with self._transaction():
            for table in ("instances", "series", "studies", "patients"):
                self._db.execute(f"DELETE FROM {table}")

    def files(self) -> Iterator[tuple[str, str, int]]:
        """(SOP Instance UID, relative path, size) of every indexed instance."""
        for uid, path, size in self._db.execute(
            "SELECT sop_instance_uid, path, size FROM instances ORDER BY path"
        ):
            yield str(uid), str(path), int(size)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def studies(self) -> list[StudyRow]:
        rows = self._db.execute(
            """
            SELECT st.study_uid, p.patient_id, p.patient_name, st.study_date,
                   st.description, st.accession_number,
                   GROUP_CONCAT(DISTINCT se.modality), COUNT(DISTINCT se.series_uid),
                   COUNT(i.sop_instance_uid), COALESCE(SUM(i.size), 0)
            FROM studies st
            JOIN patients p ON p.patient_key = st.patient_key
            JOIN series se ON se.study_uid = st.study_uid
            JOIN instances i ON i.series_uid = se.series_uid
            GROUP BY st.study_uid
            ORDER BY st.study_date DESC, p.patient_name
            """
        ).fetchall()
        return [
            StudyRow(*[str(v or "") for v in row[:7]], *[int(v) for v in row[7:]])  # type: ignore[arg-type]
            for row in rows
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
