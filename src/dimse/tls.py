"""TLS contexts for DICOM's secure transport connection profiles (PS3.15 Annex B).

The current profiles (BCP 195, PS3.15 §B.9-B.11) ask for TLS 1.2 or later, with
certificates verified; both contexts enforce at least TLS 1.2.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    verify: bool = True,
) -> ssl.SSLContext:
    """For an SCU: verify the SCP against `ca` (or the system store); present `cert`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def server_context(
    cert: Path,
    key: Path | None = None,
    ca: Path | None = None,
    *,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """For an SCP: present `cert`; verify client certificates against `ca` when given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("requiring client certificates needs a CA to verify them with")
    return context
