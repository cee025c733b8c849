"""Asynchronous operations (PS3.7 §D.3.3.3): several C-STOREs in flight on one association."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import uvloop

import dimse
from conftest import stored_files
from dimse.client import RawDataSet
from dimse.dimse import CStoreRSP
from dimse.negotiation import MAX_ASYNC_OPS, ProposedContext
from dimse.sender import Kind, StoreResult
from dimse.server import DataSetSink, Outcome, StoreRequest
from dimse.storage import StorageProvider
from test_sender import _generated

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class Gate:
    """Holds every store open until `expected` are in progress at once (or a deadline)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.in_progress = 0
        self.peak = 0
        self.all_in = asyncio.Event()
        self.received: dict[str, bytes] = {}


class HeldSink:
    def __init__(self, gate: Gate, uid: str) -> None:
        self.gate, self.uid, self.data = gate, uid, bytearray()

    async def write(self, data: memoryview) -> None:
        self.data += data

    async def complete(self) -> int | Outcome:
        gate = self.gate
        gate.in_progress += 1
        gate.peak = max(gate.peak, gate.in_progress)
        if gate.in_progress >= gate.expected:
            gate.all_in.set()
        # If fewer come at once than expected, the deadline passes and `peak` tells.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.all_in.wait(), 5)
        gate.in_progress -= 1
        gate.received[self.uid] = bytes(self.data)
        return dimse.Status.SUCCESS

    async def discard(self) -> None:
        self.data.clear()


class HoldingProvider(dimse.ServiceProvider):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def on_store(self, request: StoreRequest) -> DataSetSink | int | Outcome:
        return HeldSink(self.gate, request.message.affected_sop_instance_uid)


def _instance(n: int) -> RawDataSet:
    return RawDataSet(CT, f"1.2.3.{n}", EXPLICIT_LE, bytes([n % 256]) * (1000 + 2 * n))


async def _store_all(window: int, count: int) -> tuple[Gate, list[Any], list[CStoreRSP]]:
    gate = Gate(expected=window)
    options = dimse.ServerOptions(max_async_ops=16)
    async with dimse.Server(HoldingProvider(gate), "127.0.0.1", 0, options) as server:
        called: list[CStoreRSP] = []
        async with dimse.connect(
            "127.0.0.1",
            server.port,
            called_ae="DIMSE",
            contexts=[ProposedContext(CT, (EXPLICIT_LE,))],
            async_ops=window,
        ) as assoc:
            assert assoc.association.max_invoked == window
            sources = [_instance(n) for n in range(count)]
            responses = await asyncio.gather(
                *(assoc.store(s, callback=called.append) for s in sources)
            )
    return gate, responses, called


def test_window_of_eight_keeps_eight_in_flight() -> None:
    gate, responses, called = asyncio.run(_store_all(window=8, count=24))
    assert gate.peak == 8  # the server saw 8 stores outstanding at once, never more
    for n, response in enumerate(responses):
        assert response.status == 0
        assert response.affected_sop_instance_uid == f"1.2.3.{n}"
        assert gate.received[f"1.2.3.{n}"] == _instance(n).data
    assert len({r.message_id_being_responded_to for r in responses}) == 24
    assert sorted(called, key=lambda r: r.affected_sop_instance_uid) == sorted(
        responses, key=lambda r: r.affected_sop_instance_uid
    )


def test_window_of_one_is_synchronous() -> None:
    gate, responses, _ = asyncio.run(_store_all(window=1, count=4))
    assert gate.peak == 1
    assert [r.status for r in responses] == [0] * 4


def test_default_sender_and_server_keep_a_full_window_in_flight(tmp_path: Path) -> None:
    """The defaults on both sides: the window the archive's filing rounds rely on."""
    paths = _generated(tmp_path, 2 * MAX_ASYNC_OPS)
    gate = Gate(expected=MAX_ASYNC_OPS)

    async def scenario() -> list[StoreResult]:
        async with dimse.Server(HoldingProvider(gate), "127.0.0.1", 0) as server:
            client = dimse.Client("127.0.0.1", server.port, called_ae="DIMSE")
            for path in paths:
                client.add_request(path)
            return await client.send()

    results = asyncio.run(scenario())
    assert gate.peak == MAX_ASYNC_OPS == 256
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(paths)
    assert len(gate.received) == len(paths)


def test_server_and_client_run_on_uvloop(tmp_path: Path) -> None:
    """uvloop's transports implement asyncio's without subclassing them."""
    paths = _generated(tmp_path / "in", 40)
    provider = StorageProvider(tmp_path / "archive")

    async def scenario() -> tuple[int, list[StoreResult]]:
        async with dimse.Server(provider, "127.0.0.1", 0) as server:
            async with dimse.connect(
                "127.0.0.1", server.port, called_ae="DIMSE", contexts=dimse.default_contexts()
            ) as assoc:
                echo = await assoc.echo()
            client = dimse.Client("127.0.0.1", server.port, called_ae="DIMSE")
            for path in paths:
                client.add_request(path)
            return echo, await client.send()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            echo, results = runner.run(scenario())
    finally:
        provider.close()
    assert echo == 0
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(paths)
    assert len(stored_files(tmp_path / "archive")) == len(paths)
