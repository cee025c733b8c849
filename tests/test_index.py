"""The SQLite index on its own: one round's writes and look-ups."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dimse.index import Index, Instance


def _instance(number: int, **changes: object) -> Instance:
    base = Instance(
        sop_instance_uid=f"1.2.3.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        path=f"study/series/{number}.dcm",
        size=100 + number,
        calling_ae="CT1",
        received=0.0,
        patient_id="P1",
        patient_name="DOE^JOHN",
        study_uid="1.2.3",
        series_uid="1.2.3.1",
        series_description="first",
        instance_number=number,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_round_leaves_what_writing_one_by_one_would(tmp_path: Path) -> None:
    together, apart = Index(tmp_path / "a.sqlite"), Index(tmp_path / "b.sqlite")
    items = [
        _instance(1),
        _instance(2, series_description="second", patient_name="DOE^J"),
        _instance(3, series_uid="1.2.3.2", series_description="other"),
    ]
    together.add_many(items)
    for item in items:
        apart.add_many([item])
    for index in (together, apart):
        assert index.count() == 3
        (study,) = index.studies()
        assert (study.patient_name, study.series, study.instances) == (
            "DOE^JOHN",
            2,
            3,
        )  # the last instance names it
    dump = "SELECT * FROM {} ORDER BY 1"
    for table in ("patients", "studies", "series"):
        assert (
            together._db.execute(dump.format(table)).fetchall()
            == apart._db.execute(dump.format(table)).fetchall()
        )


def test_get_many_finds_the_stored_among_many(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.add_many([_instance(n) for n in range(0, 1200, 2)])  # the even ones
    asked = [f"1.2.3.{n}" for n in range(1200)]  # more than one query's variables
    found = index.get_many(asked)
    assert found == {f"1.2.3.{n}": f"study/series/{n}.dcm" for n in range(0, 1200, 2)}
    assert index.get_many(["1.2.3.1"]) == {}
