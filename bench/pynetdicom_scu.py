"""pynetdicom storage SCU for the benchmark: one association, files sent one by one.

Files are handed to send_c_store() as paths, so pynetdicom streams each data set
from disk without decoding it (its fastest documented way to send a file); the
SOP classes and transfer syntaxes to propose come from each file's meta group,
as a real sender would have to find them. Exit status 0 only when every C-STORE answered Success.

    python bench/pynetdicom_scu.py HOST PORT FOLDER [--called-ae AET]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE


def dicom_files(folder: Path) -> list[tuple[Path, tuple[str, str]]]:
    """Every file under `folder` (recursively) with its SOP class and transfer syntax."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        meta = read_file_meta_info(path)
        found.append((path, (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--called-ae", default="ANY-SCP")
    args = parser.parse_args()

    files = dicom_files(args.folder)
    ae = AE(ae_title="PYNETDICOM")
    # One context per SOP class and the file's own syntax: offered [Explicit, Implicit]
    # in one context, pynetdicom's SCP picks Implicit and the SCU then re-encodes.
    for sop_class, syntax in dict.fromkeys(kind for _, kind in files):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        print("pynetdicom SCU: no association", file=sys.stderr)
        return 3
    failed = 0
    try:
        for number, (path, _) in enumerate(files):
            response = assoc.send_c_store(path, msg_id=number % 65535 + 1)
            if "Status" not in response or response.Status != 0x0000:
                failed += 1
                print(f"{path}: failed {response.get('Status')}", file=sys.stderr)
    finally:
        if assoc.is_established:
            assoc.release()
    print(f"sent {len(files)} file(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
