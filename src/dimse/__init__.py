"""dimse: DICOM networking (C-ECHO, C-STORE) for asyncio, and a storage archive.

The protocol core (:mod:`dimse.pdu`, :mod:`dimse.upper_layer`,
:mod:`dimse.negotiation`, :mod:`dimse.dimse`, :mod:`dimse.connection`) is pure,
sans-I/O code; :mod:`dimse.client` and :mod:`dimse.server` drive it with asyncio.
"""

from dimse.client import (
    AssociationError,
    AssociationRejectedError,
    ClientAssociation,
    NoAcceptedContextError,
    RawDataSet,
    connect,
    contexts_for,
    default_contexts,
)
from dimse.files import DicomFile, NotDicomError, open_dicom_file
from dimse.negotiation import ProposedContext
from dimse.sender import Client, CStoreRequest, StoreResult
from dimse.server import DataSetSink, Outcome, Peer, Server, ServerOptions, ServiceProvider
from dimse.status import Status
from dimse.storage import StorageProvider
from dimse.transport import Timeouts

__version__ = "0.1.0"

__all__ = [
    "AssociationError",
    "AssociationRejectedError",
    "CStoreRequest",
    "Client",
    "ClientAssociation",
    "DataSetSink",
    "DicomFile",
    "NoAcceptedContextError",
    "NotDicomError",
    "Outcome",
    "Peer",
    "ProposedContext",
    "RawDataSet",
    "Server",
    "ServerOptions",
    "ServiceProvider",
    "Status",
    "StorageProvider",
    "StoreResult",
    "Timeouts",
    "connect",
    "contexts_for",
    "default_contexts",
    "open_dicom_file",
]
