"""TLS (PS3.15 Annex B), user identity (PS3.7 D.3.3.7) and the server's limits."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from pathlib import Path

import pytest
import uvloop

import dimse
from conftest import (
    PEER_ENV,
    SAMPLE_FILES,
    Processes,
    TLSFiles,
    dimse_command,
    free_port,
    require,
    run,
    stored_files,
)
from dimse import tls
from dimse.client import RawDataSet
from dimse.identity import UsersFile, add_user
from dimse.negotiation import ProposedContext
from dimse.pdu import (
    AAssociateRJ,
    RejectReason,
    RejectResult,
    RejectSource,
    UserIdentityRQ,
    UserIdentityType,
)
from dimse.storage import StorageProvider

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: TLS on both event loops: uvloop reads an accepted connection as soon as its
#: protocol's connection_made() returns, asyncio only later.
LOOPS = {"asyncio": None, "uvloop": uvloop.new_event_loop}


async def _serve(root: Path, options: dimse.ServerOptions) -> tuple[dimse.Server, StorageProvider]:
    provider = StorageProvider(root)
    server = dimse.Server(provider, "127.0.0.1", 0, options)
    await server.start()
    return server, provider


# --- user identity ------------------------------------------------------------------


def test_users_file_keeps_only_hashes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", "correct horse")
    add_user(path, "bob", None)
    add_user(path, "alice", "battery staple")  # replaces alice
    text = path.read_text()
    assert "horse" not in text and "staple" not in text and text.count("alice:") == 1
    assert path.stat().st_mode & 0o777 == 0o600
    users = UsersFile(path)
    ok = UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, False, b"alice", b"battery staple")
    assert users.verify(ok)
    old = UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, False, b"alice", b"correct horse")
    assert not users.verify(old)
    assert not users.verify(UserIdentityRQ(UserIdentityType.USERNAME, False, b"alice"))
    assert users.verify(UserIdentityRQ(UserIdentityType.USERNAME, False, b"bob"))
    assert not users.verify(UserIdentityRQ(UserIdentityType.USERNAME, False, b"eve"))


def test_identity_required_by_the_server(tmp_path: Path) -> None:
    users = tmp_path / "users"
    add_user(users, "alice", "s3cret")
    options = dimse.ServerOptions(identity=UsersFile(users), require_identity=True)

    async def attempt(port: int, identity: UserIdentityRQ | None) -> int | AAssociateRJ:
        try:
            async with dimse.connect(
                "127.0.0.1", port, called_ae="DIMSE", user_identity=identity
            ) as assoc:
                return await assoc.echo()
        except dimse.AssociationRejectedError as error:
            return error.reject

    async def scenario() -> list[int | AAssociateRJ]:
        server, provider = await _serve(tmp_path / "archive", options)
        try:
            good = UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, True, b"alice", b"s3cret")
            bad = UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, True, b"alice", b"guess")
            return [await attempt(server.port, i) for i in (good, bad, None)]
        finally:
            await server.close()
            provider.close()

    accepted, wrong_password, missing = asyncio.run(scenario())
    assert accepted == 0
    for reject in (wrong_password, missing):
        assert not isinstance(reject, int)
        assert (reject.result, reject.source, reject.reason) == (
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.NO_REASON_GIVEN,
        )


# --- limits -------------------------------------------------------------------------


def test_per_calling_ae_limit_and_data_set_size_limit(tmp_path: Path) -> None:
    options = dimse.ServerOptions(max_associations_per_ae=1, max_dataset_size=10_000)
    contexts = [ProposedContext(CT, (EXPLICIT_LE,))]

    async def scenario() -> None:
        server, provider = await _serve(tmp_path / "archive", options)
        try:
            async with dimse.connect(
                "127.0.0.1", server.port, calling_ae="CT1", called_ae="DIMSE", contexts=contexts
            ) as first:
                with pytest.raises(dimse.AssociationRejectedError) as second:
                    await dimse.connect(
                        "127.0.0.1", server.port, calling_ae="CT1", called_ae="DIMSE"
                    )
                assert second.value.reject.source is RejectSource.SERVICE_PROVIDER_PRESENTATION
                assert second.value.reject.result is RejectResult.TRANSIENT
                # Another calling AE is not affected by CT1's cap.
                other = await dimse.connect(
                    "127.0.0.1", server.port, calling_ae="MR1", called_ae="DIMSE"
                )
                await other.release()
                too_big = RawDataSet(CT, "1.2.3.4", EXPLICIT_LE, bytes(20_000))
                response = await first.store(too_big)
                assert response.status == 0xA700 and response.error_comment == "data set too large"
                assert not list((tmp_path / "archive" / ".incoming").iterdir())
            # CT1's association ended: it may come back.
            again = await dimse.connect(
                "127.0.0.1", server.port, calling_ae="CT1", called_ae="DIMSE"
            )
            assert await again.echo() == 0
            await again.release()
        finally:
            await server.close()
            provider.close()

    asyncio.run(scenario())


# --- TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_echo_and_store_with_client_certificates(
    tmp_path: Path, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    server_tls = tls.server_context(
        tls_files.server_cert, tls_files.server_key, tls_files.ca, require_client_cert=True
    )
    options = dimse.ServerOptions(ssl_context=server_tls)
    with_cert = tls.client_context(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    without_cert = tls.client_context(tls_files.ca)

    async def scenario() -> None:
        server, provider = await _serve(tmp_path / "archive", options)
        try:
            async with dimse.connect(
                "127.0.0.1",
                server.port,
                called_ae="DIMSE",
                ssl_context=with_cert,
                contexts=dimse.client.contexts_for([dimse.files.open_dicom_file(SAMPLE_FILES[0])]),
            ) as assoc:
                assert (await assoc.store(SAMPLE_FILES[0])).status == 0
            with pytest.raises(dimse.AssociationError):
                await dimse.connect(
                    "127.0.0.1", server.port, called_ae="DIMSE", ssl_context=without_cert
                )
            with pytest.raises(dimse.AssociationError):
                await dimse.connect("127.0.0.1", server.port, called_ae="DIMSE")  # plain TCP
            async with dimse.connect(  # the failed handshakes left the server serving
                "127.0.0.1", server.port, called_ae="DIMSE", ssl_context=with_cert
            ) as assoc:
                assert await assoc.echo() == 0
        finally:
            await server.close()
            provider.close()

    with (
        caplog.at_level(logging.WARNING, logger="dimse.server"),
        asyncio.Runner(loop_factory=LOOPS[loop]) as runner,
    ):
        runner.run(scenario())
    assert len(stored_files(tmp_path / "archive")) == 1
    # Each refused handshake is one warning: asyncio alone would have said nothing.
    failed = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failed) == 2, failed
    assert "WRONG_VERSION_NUMBER" in failed[1]  # the plain TCP client's A-ASSOCIATE-RQ


@pytest.mark.parametrize("loop", LOOPS)
def test_a_shutdown_mid_handshake_closes_the_connection(
    tmp_path: Path, tls_files: TLSFiles, loop: str
) -> None:
    """A client that connects to a TLS port and says nothing is in the handshake when
    the server shuts down: its connection is closed, not left open."""
    options = dimse.ServerOptions(
        ssl_context=tls.server_context(tls_files.server_cert, tls_files.server_key)
    )

    async def scenario() -> bytes:
        server, provider = await _serve(tmp_path / "archive", options)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            await asyncio.sleep(0.2)  # accepted, waiting for a ClientHello
            assert server.active_associations == 1
            await server.close(grace=0.2)
            return await asyncio.wait_for(reader.read(), 5)  # EOF: closed by the server
        finally:
            writer.close()
            provider.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(scenario()) == b""


def test_tls_context_refuses_old_protocols(tls_files: TLSFiles) -> None:
    context = tls.server_context(tls_files.server_cert, tls_files.server_key)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls.client_context(tls_files.ca).minimum_version >= ssl.TLSVersion.TLSv1_2


def test_dcmtk_storescu_over_tls(tmp_path: Path, tls_files: TLSFiles) -> None:
    storescu = require("storescu")
    server_tls = tls.server_context(
        tls_files.server_cert, tls_files.server_key, tls_files.ca, require_client_cert=True
    )

    async def scenario() -> tuple[int, bytes]:
        server, provider = await _serve(
            tmp_path / "archive", dimse.ServerOptions(ssl_context=server_tls)
        )
        try:
            process = await asyncio.create_subprocess_exec(
                storescu,
                "+tls",
                str(tls_files.client_key),
                str(tls_files.client_cert),
                "+cf",
                str(tls_files.ca),
                "-aec",
                "DIMSE",
                "127.0.0.1",
                str(server.port),
                str(SAMPLE_FILES[0]),
                env=PEER_ENV,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), 60)
            return process.returncode or 0, output
        finally:
            await server.close()
            provider.close()

    code, output = asyncio.run(scenario())
    assert code == 0, output.decode(errors="replace")
    assert len(stored_files(tmp_path / "archive")) == 1


def _client_tls_options(files: TLSFiles) -> list[str | Path]:
    return [
        "--tls",
        *("--tls-ca", files.ca),
        *("--tls-cert", files.client_cert),
        *("--tls-key", files.client_key),
    ]


def test_cli_tls_and_user_identity(
    processes: Processes, tmp_path: Path, tls_files: TLSFiles
) -> None:
    users = tmp_path / "users"
    added = subprocess.run(
        dimse_command("users", "add", users, "alice"),
        input="pa55word\n",
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
    assert "pa55word" not in users.read_text()
    port = free_port()
    processes.server(
        dimse_command(
            "serve",
            port,
            "-od",
            tmp_path / "archive",
            "--bind",
            "127.0.0.1",
            "--tls-cert",
            tls_files.server_cert,
            "--tls-key",
            tls_files.server_key,
            "--tls-ca",
            tls_files.ca,
            "--require-client-cert",
            "--users",
            users,
            "--require-identity",
        ),
        port,
    )
    base = ["-aec", "DIMSE", *_client_tls_options(tls_files), "127.0.0.1", port]
    good = run(dimse_command("store", "+usr", "alice", "+pwd", "pa55word", *base, SAMPLE_FILES[0]))
    assert good.returncode == 0, good.stdout + good.stderr
    wrong = run(dimse_command("echo", "+usr", "alice", "+pwd", "guess", *base))
    assert wrong.returncode == 3 and "rejected" in wrong.stderr
    plain = run(
        dimse_command(
            "echo",
            "+usr",
            "alice",
            "+pwd",
            "pa55word",
            "-aec",
            "DIMSE",
            "-to",
            "5",
            "127.0.0.1",
            port,
        )
    )
    # Turned away at once (its A-ASSOCIATE-RQ is no ClientHello), not left to time out.
    assert plain.returncode == 3 and "closed by peer" in plain.stderr, plain.stderr
    assert len(stored_files(tmp_path / "archive")) == 1
    usage = run(dimse_command("serve", free_port(), "--require-identity"))
    assert usage.returncode == 2 and "--users" in usage.stderr


def test_dimse_store_to_dcmtk_storescp_over_tls(
    processes: Processes, tmp_path: Path, tls_files: TLSFiles
) -> None:
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    processes.server(
        [
            require("storescp"),
            "+tls",
            tls_files.server_key,
            tls_files.server_cert,
            "+cf",
            tls_files.ca,
            "+B",
            "-od",
            out,
            port,
        ],
        port,
    )
    options = _client_tls_options(tls_files)
    result = run(dimse_command("store", *options, "127.0.0.1", port, SAMPLE_FILES[0]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(stored_files(out)) == 1
