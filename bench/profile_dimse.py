"""Run the `dimse` command under cProfile, worker threads included.

`python -m cProfile` sees the main thread only, but `dimse serve` does its disk
work (write, fsync, rename, index) in worker threads, so that time would show up
as the event loop waiting. Here every thread gets a profiler of its own; at exit
the main thread's statistics go to OUT and all other threads', merged, to
OUT.threads (absent when no thread ran Python code).

    python bench/profile_dimse.py OUT.prof serve 11112 -od /tmp/archive ...
"""

from __future__ import annotations

import atexit
import cProfile
import sys
import threading
from pathlib import Path


def main() -> int:
    target = Path(sys.argv[1])
    arguments = sys.argv[2:]
    finished: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()
            finished.append(profile)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def dump() -> None:
        """atexit runs after the interpreter has joined the worker threads."""
        if finished:
            import pstats

            merged = pstats.Stats(finished[0])
            for profile in finished[1:]:
                merged.add(profile)
            merged.dump_stats(f"{target}.threads")

    atexit.register(dump)
    from dimse.cli import main as dimse

    profile = cProfile.Profile()
    try:
        return int(profile.runcall(dimse, arguments) or 0)
    finally:
        profile.dump_stats(target)


if __name__ == "__main__":
    sys.exit(main())
