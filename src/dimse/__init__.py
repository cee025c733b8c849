"""dimse: DICOM networking (C-ECHO, C-STORE) for asyncio, and a storage archive.

The protocol core (:mod:`dimse.pdu`, :mod:`dimse.upper_layer`,
:mod:`dimse.negotiation`, :mod:`dimse.dimse`, :mod:`dimse.connection`) is pure,
sans-I/O code; :mod:`dimse.client` and :mod:`dimse.server` drive it with asyncio.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Imported on first use (PEP 562), so that the `dimse` command can decide what
#: the process needs before pydicom is loaded (see dimse.launcher).
_EXPORTS = {
    "AssociationError": "dimse.client",
    "AssociationRejectedError": "dimse.client",
    "ClientAssociation": "dimse.client",
    "NoAcceptedContextError": "dimse.client",
    "RawDataSet": "dimse.client",
    "connect": "dimse.client",
    "contexts_for": "dimse.client",
    "default_contexts": "dimse.client",
    "DicomFile": "dimse.files",
    "NotDicomError": "dimse.files",
    "open_dicom_file": "dimse.files",
    "ProposedContext": "dimse.negotiation",
    "Client": "dimse.sender",
    "CStoreRequest": "dimse.sender",
    "StoreResult": "dimse.sender",
    "DataSetSink": "dimse.server",
    "Outcome": "dimse.server",
    "Peer": "dimse.server",
    "Server": "dimse.server",
    "ServerOptions": "dimse.server",
    "ServiceProvider": "dimse.server",
    "Status": "dimse.status",
    "StorageProvider": "dimse.storage",
    "Timeouts": "dimse.transport",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dimse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
