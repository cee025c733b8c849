"""Shared test helpers: pydicom's bundled files, free ports, peers as real processes."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pydicom
import pytest

from dimse.files import open_dicom_file

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: One or two of pydicom's bundled files per transfer syntax (used from the package
#: folder: asking pydicom's data manager for a file that is not bundled downloads it).
SAMPLES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": ("MR_small_implicit.dcm", "SC_rgb_jpeg_dcmd.dcm"),
    "1.2.840.10008.1.2.1": ("CT_small.dcm", "SC_ybr_full_422_uncompressed.dcm"),
    "1.2.840.10008.1.2.2": ("ExplVR_BigEnd.dcm",),
    "1.2.840.10008.1.2.1.99": ("image_dfl.dcm",),
    "1.2.840.10008.1.2.4.50": ("SC_rgb_jpeg_dcmtk.dcm",),
    "1.2.840.10008.1.2.4.51": ("JPEG-lossy.dcm",),
    "1.2.840.10008.1.2.4.81": ("JPEGLSNearLossless_16.dcm",),
    "1.2.840.10008.1.2.4.90": ("examples_jpeg2k.dcm",),
    "1.2.840.10008.1.2.4.91": ("693_J2KI.dcm",),
    "1.2.840.10008.1.2.5": ("SC_rgb_rle.dcm",),
}
SAMPLE_FILES: list[Path] = [TEST_FILES / n for names in SAMPLES.values() for n in names]

PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}  # Debian's dcmtk waits on delayed ACKs otherwise


def unavailable(reason: str) -> NoReturn:
    """What a test needs is missing: it skips on a laptop, but fails in CI, whose
    machine the project's scripts set up with everything (scripts/install-test-deps)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: required in CI (scripts/install-test-deps)")
    pytest.skip(reason)


def require(tool: str) -> str:
    """The path of a dcmtk tool; a missing one skips, except in CI where it fails.

    pynetdicom installs console scripts with dcmtk's names (storescu, storescp...),
    so the tool is recognised by its version banner, not by its name.
    """
    path = _dcmtk_tool(tool)
    if path is None:
        unavailable(f"dcmtk's {tool} not installed")
    return path


@functools.cache
def _dcmtk_tool(tool: str) -> str | None:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(tool, path=folder)
        if candidate is None:
            continue
        banner = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if "dcmtk" in (banner.stdout + banner.stderr).lower():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Processes:
    """Processes a test starts; each is ended by its own PID at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str | Path], env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """`env`: variables set for this process on top of PEER_ENV."""
        process = subprocess.Popen(
            [str(a) for a in args],
            env={**PEER_ENV, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kwargs,  # type: ignore[call-overload]
        )
        self.started.append(process)
        return process

    def server(self, args: Sequence[str | Path], port: int) -> subprocess.Popen[bytes]:
        process = self.start(args)
        wait_for_port(port, process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


def dimse_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "dimse", *(str(a) for a in args)]


def run(
    args: Sequence[str | Path], timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`env`: variables set for this process on top of PEER_ENV."""
    return subprocess.run(
        [str(a) for a in args],
        env={**PEER_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python_output(code: str) -> str:
    """What `code` prints, run by this Python in a fresh process: one whose imports
    are not this test session's."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def nested_sequences(depth: int, closed: bool = True) -> bytes:
    """(0040,A730) Content Sequences nested `depth` deep in Explicit VR Little Endian,
    each sequence and item of undefined length (PS3.5 §7.5.2), then closed, or not
    (a data set cut short)."""
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    opening += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + (closing * depth if closed else b"")


def dataset_bytes(path: Path) -> bytes:
    """A PS3.10 file's data set as encoded, without preamble and file meta."""
    file = open_dicom_file(path)
    with path.open("rb") as fp:
        fp.seek(file.dataset_offset)
        return fp.read()


def stored_files(root: Path) -> dict[str, Path]:
    """Received files by SOP instance UID, wherever the archive put them."""
    found = {}
    for path in root.rglob("*"):
        hidden = any(p.startswith(".") for p in path.relative_to(root).parts)
        if path.is_file() and not hidden and not path.name.startswith("index.sqlite"):
            found[open_dicom_file(path).sop_instance_uid] = path
    return found


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer_key: ec.EllipticCurvePrivateKey,
        issuer: str,
        *,
        ca: bool = False,
        ip: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        return path

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("dimse test CA", ca_key, ca_key, "dimse test CA", ca=True)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server = issue("127.0.0.1", server_key, ca_key, "dimse test CA", ip=True)
    client = issue("MODALITY", client_key, ca_key, "dimse test CA")
    pem = serialization.Encoding.PEM
    return TLSFiles(
        ca=write(folder / "ca.pem", ca.public_bytes(pem)),
        server_cert=write(folder / "server.pem", server.public_bytes(pem)),
        server_key=write(folder / "server.key", pem_key(server_key)),
        client_cert=write(folder / "client.pem", client.public_bytes(pem)),
        client_key=write(folder / "client.key", pem_key(client_key)),
    )
