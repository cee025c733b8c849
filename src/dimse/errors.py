"""The two kinds of error of the protocol core.

As in h11: :class:`ProtocolError` means the *peer* broke the protocol (the
connection answers with A-ABORT); :class:`LocalProtocolError` means *our caller*
used the API in a way the protocol does not allow (a bug to fix, nothing is sent).
"""

from __future__ import annotations

import enum


class AbortReason(enum.IntEnum):
    """A-ABORT reasons when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class ProtocolError(Exception):
    """The peer sent something the standard does not allow."""

    def __init__(
        self, message: str, reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER_VALUE
    ) -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(Exception):
    """Our caller asked for something the protocol forbids in the current state."""
