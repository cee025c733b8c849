"""What a :class:`~dimse.connection.Connection` tells its driver, one class per happening."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dimse.pdu import AAssociateRJ, AAssociateRQ, AbortSource

if TYPE_CHECKING:  # both build on this module's events
    from dimse.dimse import Message
    from dimse.negotiation import Association


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """A peer asks for an association (A-ASSOCIATE indication): accept or reject it."""

    request: AAssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """The association is established (A-ASSOCIATE confirmation/response, accept)."""

    association: Association


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """The peer rejected our request (A-ASSOCIATE confirmation, reject)."""

    reject: AAssociateRJ


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole DIMSE command set; when `has_dataset`, DataReceived events follow."""

    context_id: int
    message: Message
    has_dataset: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """One fragment of a message's data set, in order; `last` closes the data set."""

    context_id: int
    data: memoryview = field(repr=False)
    last: bool


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """The peer asks to release (A-RELEASE indication): answer with accept_release()."""


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """Our release request was answered (A-RELEASE confirmation)."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """The association ended abnormally (A-ABORT or A-P-ABORT indication).

    `local_error` is set when *we* aborted because the peer broke the protocol.
    """

    source: AbortSource
    reason: int
    local_error: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The transport connection is closed; the connection object is finished."""


Event = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | CommandReceived
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
    | ConnectionClosed
)
