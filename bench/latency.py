"""C-ECHO round trips and C-STORE latencies against one receiver, dimse as the client.

    python bench/latency.py PORT FILE... [--echoes N] [--called-ae AET]

One association on 127.0.0.1: first the C-ECHOs one after another, then each file
stored with nothing else in flight, so each figure is one request's round trip
(for a C-STORE: sending the data set, the receiver storing it, the response).
Every receiver is measured with the same client, so the figures compare receivers.
Prints one JSON object: the count, p50 and p99 in ms of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import dimse
from dimse.negotiation import ProposedContext
from dimse.sop_classes import VERIFICATION


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"count": len(samples), "p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


async def measure(port: int, paths: list[Path], echoes: int, called_ae: str) -> dict[str, object]:
    files = [dimse.open_dicom_file(path) for path in paths]
    contexts = [
        ProposedContext(VERIFICATION, ("1.2.840.10008.1.2",)),
        *dimse.contexts_for(files),
    ]
    echo_ms, store_ms = [], []
    async with dimse.connect("127.0.0.1", port, called_ae=called_ae, contexts=contexts) as assoc:
        for _ in range(echoes):
            started = time.perf_counter()
            if await assoc.echo() != 0:
                raise SystemExit("C-ECHO failed")
            echo_ms.append((time.perf_counter() - started) * 1000)
        for file in files:
            started = time.perf_counter()
            response = await assoc.store(file)
            if response.status != 0:
                raise SystemExit(f"C-STORE of {file.path} failed: {response.status:04X}")
            store_ms.append((time.perf_counter() - started) * 1000)
    return {"echo": percentiles(echo_ms), "store": percentiles(store_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--echoes", type=int, default=200)
    parser.add_argument("--called-ae", default="BENCH")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.port, args.files, args.echoes, args.called_ae))))


if __name__ == "__main__":
    main()
