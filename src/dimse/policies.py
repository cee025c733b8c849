"""The archive's policies: where an instance is filed (Layout), what a second copy
gets (DuplicatePolicy), how a file is made durable (SyncMode).

Apart from :mod:`dimse.storage` so that the `dimse` command can offer them as
options without importing the archive: `dimse store` starts ~20 ms sooner.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dimse.index import Instance

_UNSAFE = re.compile(r"[^0-9A-Za-z.\-^ ]")


def safe_name(value: str) -> str:
    """A path component from an attribute value: no separators, no '..', never empty."""
    name = _UNSAFE.sub("_", value.strip()).replace(" ", "_")[:64].strip(".")
    return name or "_"


class Layout(Enum):
    """Where an instance goes under the root, like storescp's --sort-on-* options."""

    STUDY = "study"  # <Study UID>/<Series UID>/<SOP UID>.dcm
    PATIENT = "patient"  # <Patient ID>/<Study UID>/<Series UID>/<SOP UID>.dcm
    DATE = "date"  # <Study date>/<Study UID>/<Series UID>/<SOP UID>.dcm
    FLAT = "flat"  # <SOP UID>.dcm

    def path(self, item: Instance) -> str:
        """Relative to the root; a str, as pathlib costs ~50 µs per instance filed."""
        name = safe_name(item.sop_instance_uid) + ".dcm"
        if self is Layout.FLAT:
            return name
        study = os.path.join(safe_name(item.study_uid), safe_name(item.series_uid), name)
        if self is Layout.PATIENT:
            return os.path.join(safe_name(item.patient_id or "UNKNOWN"), study)
        if self is Layout.DATE:
            return os.path.join(safe_name(item.study_date or "UNKNOWN"), study)
        return study

    def study_folder(self, item: Instance) -> Path:
        """The folder holding a study's series (the root itself when flat)."""
        return Path() if self is Layout.FLAT else Path(self.path(item)).parent.parent


class SyncMode(Enum):
    """How a filing round makes its files durable before renaming them into place."""

    FILE = "file"  # fsync each file, a round's all at once (dimse.durability): any system
    #: One syncfs(2) of the archive's file system per round, so one cache flush
    #: instead of one per file: 1-5% more small images per second here (10-20%
    #: when FILE's fsyncs ran on threads; see dimse.durability). It also
    #: flushes what other programs wrote to that file system, so it suits an archive
    #: on a volume of its own. Linux 5.8+ (earlier, syncfs hid write-back errors).
    FILESYSTEM = "filesystem"


class DuplicatePolicy(Enum):
    """What a second copy of a stored SOP Instance UID gets."""

    KEEP = "keep"  # keep the first, answer Success
    OVERWRITE = "overwrite"  # replace it
    REJECT = "reject"  # answer 0111 Duplicate SOP instance
