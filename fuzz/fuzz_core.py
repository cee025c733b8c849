"""Run the protocol core's hostile-input properties for minutes instead of seconds.

    python fuzz/fuzz_core.py --minutes 5
    python fuzz/fuzz_core.py --minutes 30 --only connection,decode --seed 1234

The properties, strategies and mutations are those of tests/test_fuzz.py (its
PROPERTIES): decode, PDUReader, command-set decoding, the MessageAssembler,
negotiation, and Connection.receive_data in both roles and several states. Each
round gives every property a few seconds of two engines in turn, until the time is up:

* hypothesis: examples of the property's strategy (deadline=None, no example
  database), shrunk when one fails;
* random: a plain loop of the same mutations over a pool of valid PDUs drawn once
  from the strategies; far more inputs per second, nothing shrunk.

`--engine` picks one. Progress goes to stdout; a failing input is printed as hex and
written whole to `--out`/<property>-<n>.hex. Exit status: 0 when nothing failed, 1
otherwise.

Not part of the test run: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Seconds one round of one property aims to take.
ROUND_SECONDS = 5.0


def load_properties() -> ModuleType:
    """tests/test_fuzz.py, imported as the test suite imports it (tests/ on the path)."""
    for folder in (ROOT / "src", ROOT / "tests"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return importlib.import_module("test_fuzz")


def run_round(strategy: Any, check: Callable[[Any], None], examples: int, seed: int | None) -> None:
    """`examples` hypothesis examples of one property; raises what the check raises."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    def prop(value: Any) -> None:
        check(value)

    test = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )(given(strategy)(prop))  # type: ignore[no-untyped-call]
    fixed_seed(seed)(test)()


def draw_pool(strategy: Any, count: int, seed: int) -> list[Any]:
    """`count` values of a hypothesis strategy, for the random engine to mutate."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    pool: list[Any] = []

    @fixed_seed(seed)
    @settings(
        max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def collect(value: Any) -> None:
        pool.append(value)

    collect()
    return pool


class RandomEngine:
    """Inputs for each property from random mutations of a pool of valid PDUs."""

    def __init__(self, module: ModuleType, seed: int) -> None:
        self.m = module
        self.rng = random.Random(seed)
        self.pdus: list[bytes] = list(module.REALISTIC) + draw_pool(
            module.valid_pdu_bytes, 400, seed
        )
        self.commands: list[bytes] = [p[12:] for p in self.pdus if p[:1] == b"\x04"]
        self.requests: list[bytes] = [p for p in self.pdus if p[:1] == b"\x01"]

    def _mutated(self, pool: list[bytes]) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.05:
            return rng.randbytes(rng.randrange(80))
        base = rng.choice(pool)
        return base if choice < 0.15 else self.m.mutate(base, rng, rng.randint(1, 6))

    def _stream(self) -> bytes:
        return b"".join(self._mutated(self.pdus) for _ in range(self.rng.randint(1, 5)))

    def _cuts(self, size: int) -> list[int]:
        return sorted(self.rng.randrange(size + 1) for _ in range(self.rng.randrange(6)))

    def input(self, name: str) -> Any:
        m, rng = self.m, self.rng
        if name == "decode":
            return self._mutated(self.pdus)
        if name == "reader":
            stream = self._stream()
            return stream, self._cuts(len(stream)), rng.choice((0, 64, 4096))
        if name == "command":
            return self._mutated(self.commands)
        if name == "assembler":
            return [
                m.PDV(rng.choice((1, 3, 5)), rng.random() < 0.6, rng.random() < 0.7, data)
                for data in (self._mutated(self.commands) for _ in range(rng.randint(1, 6)))
            ]
        if name == "negotiation":
            return self._mutated(self.requests)
        requestor = rng.random() < 0.5
        setups = m.REQUESTOR_SETUPS if requestor else m.ACCEPTOR_SETUPS
        stream = self._stream()
        edges = [0, *self._cuts(len(stream)), len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
        if rng.random() < 0.3:
            chunks.append(b"")
        return m.Scenario(requestor, rng.choice(setups), tuple(chunks), rng.random() < 0.5)

    def run(self, name: str, check: Callable[[Any], None], seconds: float) -> int:
        """Inputs for `seconds`; returns how many; raises what the check raises."""
        count, until = 0, time.monotonic() + seconds
        while time.monotonic() < until:
            for _ in range(50):
                check(self.input(name))
            count += 50
        return count


def report(name: str, number: int, error: BaseException, out: Path, failure: type) -> None:
    print(f"\n*** {name}: FAILED ({type(error).__name__})", flush=True)
    print(str(error)[:20000], flush=True)
    data = getattr(error, "data", b"") if isinstance(error, failure) else b""
    if data:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}-{number}.hex"
        path.write_text(data.hex() + "\n")
        print(f"    whole input ({len(data)} bytes) written to {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (5)")
    parser.add_argument("--only", default="", help="comma-separated property names")
    parser.add_argument("--seed", type=int, default=None, help="seed (random if not given)")
    parser.add_argument(
        "--engine", choices=("both", "hypothesis", "random"), default="both", help="(both)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "dimse-fuzz-failures"
    )
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args(argv)

    module = load_properties()
    properties: dict[str, tuple[Any, Callable[[Any], None]]] = module.PROPERTIES
    names = [n for n in args.only.split(",") if n] or list(properties)
    unknown = sorted(set(names) - set(properties))
    if unknown:
        parser.error(f"unknown properties {unknown}; known: {', '.join(properties)}")

    started = time.monotonic()
    deadline = started + args.minutes * 60
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    engines = ["hypothesis", "random"] if args.engine == "both" else [args.engine]
    randomly = RandomEngine(module, seed) if "random" in engines else None
    batch = dict.fromkeys(names, 50)  # hypothesis examples per round, adapted to the time
    totals = {(name, engine): 0 for name in names for engine in engines}
    failures = 0
    round_number = 0
    print(f"fuzzing {', '.join(names)} for {args.minutes:g} min, seed {seed}", flush=True)
    while time.monotonic() < deadline:
        round_number += 1
        for name, engine in [(n, e) for n in names for e in engines]:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            strategy, check = properties[name]
            began = time.monotonic()
            count = 0
            try:
                if engine == "random":
                    assert randomly is not None
                    count = randomly.run(name, check, min(ROUND_SECONDS, left))
                else:
                    count = batch[name]
                    run_round(strategy, check, count, seed * 100_003 + round_number)
            except Exception as error:
                failures += 1
                report(name, failures, error, args.out, module.FuzzFailure)
                if args.stop_on_failure:
                    return 1
            spent = max(time.monotonic() - began, 1e-3)
            totals[name, engine] += count
            rate = count / spent
            if engine == "hypothesis":  # next round: about ROUND_SECONDS, within the deadline
                target = min(ROUND_SECONDS, max(deadline - time.monotonic(), 0.5))
                batch[name] = max(10, min(int(rate * target), 100_000))
            print(
                f"[{time.monotonic() - started:7.1f}s] round {round_number:3d} "
                f"{name:<12} {engine:<10} {count:7d} inputs ({rate:6.0f}/s), "
                f"total {totals[name, engine]:9d}",
                flush=True,
            )
    print(
        f"done in {time.monotonic() - started:.0f} s: {sum(totals.values())} examples, "
        f"{failures} failure(s)",
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
