"""pynetdicom storage SCP for the benchmark: durable like `dimse serve`, else stock.

Each data set is written bit-preserving (file meta + the peer's encoded bytes) to
a temporary file that is fsynced, renamed into place and its folder fsynced
before Success is answered, the same promise `dimse serve` makes, so the two
receivers do the same disk work. Everything else is pynetdicom's defaults
(maximum PDU 16382, the data set held in memory until complete).

    python bench/pynetdicom_scp.py PORT OUTPUT_DIR [--ae-title AET]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def _fsync_dir(path: Path) -> None:
    """A rename is durable only once its folder is fsynced too."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_handler(root: Path) -> Callable[[Event], int]:
    """A C-STORE handler that stores into `root`/<SOPInstanceUID>.dcm."""
    incoming = root / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)

    def handle_store(event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        temp = incoming / f"{uuid.uuid4().hex}.part"
        try:
            with temp.open("wb") as fp:
                fp.write(event.encoded_dataset(include_meta=True))
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(temp, root / f"{uid}.dcm")
            _fsync_dir(root)
        except OSError:
            return OUT_OF_RESOURCES
        return SUCCESS

    return handle_store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("output", type=Path)
    parser.add_argument("--ae-title", default="PYNETDICOM")
    args = parser.parse_args()

    ae = AE(ae_title=args.ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, make_handler(args.output))],
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"pynetdicom SCP listening on 127.0.0.1:{args.port}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
