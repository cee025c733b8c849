"""The DICOM upper layer state machine (PS3.8 §9.2), as data.

Theory of operation: :data:`TRANSITIONS` is PS3.8 Table 9-10 transcribed cell by
cell, so a reader can hold it against the standard. A (state, event) pair that is
not in the table cannot happen in that state: for a local primitive it is our
caller's bug (:class:`~dimse.errors.LocalProtocolError`), for a received PDU the
table always has an answer. The actions themselves (send this PDU, tell the user
that) are carried out by :mod:`dimse.connection`; this module decides only which
action runs and which state follows. Nothing that affects the state lives elsewhere.
"""

from __future__ import annotations

import enum


class _Member(enum.Enum):
    """Hashed by identity, in C: Enum hashes its name in Python, and the table is
    looked up for every PDU sent and received (members are singletons, compared
    by identity, so the hash agrees with equality)."""

    __hash__ = object.__hash__


class State(_Member):
    """PS3.8 Table 9-1."""

    STA1 = "Idle"
    STA2 = "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)"
    STA3 = "Awaiting local A-ASSOCIATE response primitive"
    STA4 = "Awaiting transport connection opening to complete"
    STA5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    STA6 = "Association established and ready for data transfer"
    STA7 = "Awaiting A-RELEASE-RP PDU"
    STA8 = "Awaiting local A-RELEASE response primitive"
    STA9 = "Release collision requestor side; awaiting A-RELEASE response"
    STA10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    STA11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    STA12 = "Release collision acceptor side; awaiting A-RELEASE response primitive"
    STA13 = "Awaiting transport connection close indication"


class Event(_Member):
    """PS3.8 Table 9-2."""

    EVT1 = "A-ASSOCIATE request (local user)"
    EVT2 = "Transport connect confirmation (local transport service)"
    EVT3 = "A-ASSOCIATE-AC PDU received"
    EVT4 = "A-ASSOCIATE-RJ PDU received"
    EVT5 = "Transport connection indication"
    EVT6 = "A-ASSOCIATE-RQ PDU received"
    EVT7 = "A-ASSOCIATE response primitive (accept)"
    EVT8 = "A-ASSOCIATE response primitive (reject)"
    EVT9 = "P-DATA request primitive"
    EVT10 = "P-DATA-TF PDU received"
    EVT11 = "A-RELEASE request primitive"
    EVT12 = "A-RELEASE-RQ PDU received"
    EVT13 = "A-RELEASE-RP PDU received"
    EVT14 = "A-RELEASE response primitive"
    EVT15 = "A-ABORT request primitive"
    EVT16 = "A-ABORT PDU received"
    EVT17 = "Transport connection closed indication"
    EVT18 = "ARTIM timer expired"
    EVT19 = "Unrecognized or invalid PDU received"


class Action(_Member):
    """PS3.8 Tables 9-6 to 9-9."""

    AE_1 = "AE-1: Issue TRANSPORT CONNECT request"
    AE_2 = "AE-2: Send A-ASSOCIATE-RQ PDU"
    AE_3 = "AE-3: Issue A-ASSOCIATE confirmation (accept)"
    AE_4 = "AE-4: Issue A-ASSOCIATE confirmation (reject) and close transport"
    AE_5 = "AE-5: Issue transport connection response; start ARTIM"
    AE_6 = "AE-6: Stop ARTIM; issue A-ASSOCIATE indication or send A-ASSOCIATE-RJ"
    AE_7 = "AE-7: Send A-ASSOCIATE-AC PDU"
    AE_8 = "AE-8: Send A-ASSOCIATE-RJ PDU and start ARTIM"
    DT_1 = "DT-1: Send P-DATA-TF PDU"
    DT_2 = "DT-2: Issue P-DATA indication"
    AR_1 = "AR-1: Send A-RELEASE-RQ PDU"
    AR_2 = "AR-2: Issue A-RELEASE indication"
    AR_3 = "AR-3: Issue A-RELEASE confirmation and close transport"
    AR_4 = "AR-4: Send A-RELEASE-RP PDU and start ARTIM"
    AR_5 = "AR-5: Stop ARTIM"
    AR_6 = "AR-6: Issue P-DATA indication"
    AR_7 = "AR-7: Send P-DATA-TF PDU"
    AR_8 = "AR-8: Issue A-RELEASE indication (release collision)"
    AR_9 = "AR-9: Send A-RELEASE-RP PDU"
    AR_10 = "AR-10: Issue A-RELEASE confirmation"
    AA_1 = "AA-1: Send A-ABORT PDU; start ARTIM"
    AA_2 = "AA-2: Stop ARTIM; close transport"
    AA_3 = "AA-3: Issue A-ABORT or A-P-ABORT indication and close transport"
    AA_4 = "AA-4: Issue A-P-ABORT indication"
    AA_5 = "AA-5: Stop ARTIM"
    AA_6 = "AA-6: Ignore PDU"
    AA_7 = "AA-7: Send A-ABORT PDU"
    AA_8 = "AA-8: Send A-ABORT PDU (service-provider), issue A-P-ABORT indication, start ARTIM"


S, E, A = State, Event, Action

# The next state of each action; AE-6 and AR-8 depend on a condition (see next_state).
NEXT_STATE: dict[Action, State] = {
    A.AE_1: S.STA4,
    A.AE_2: S.STA5,
    A.AE_3: S.STA6,
    A.AE_4: S.STA1,
    A.AE_5: S.STA2,
    A.AE_7: S.STA6,
    A.AE_8: S.STA13,
    A.DT_1: S.STA6,
    A.DT_2: S.STA6,
    A.AR_1: S.STA7,
    A.AR_2: S.STA8,
    A.AR_3: S.STA1,
    A.AR_4: S.STA13,
    A.AR_5: S.STA1,
    A.AR_6: S.STA7,
    A.AR_7: S.STA8,
    A.AR_9: S.STA11,
    A.AR_10: S.STA12,
    A.AA_1: S.STA13,
    A.AA_2: S.STA1,
    A.AA_3: S.STA1,
    A.AA_4: S.STA1,
    A.AA_5: S.STA1,
    A.AA_6: S.STA13,
    A.AA_7: S.STA13,
    A.AA_8: S.STA13,
}

_RECEIVED_PDU_ROW = {  # Evt3, Evt4, Evt10, Evt12, Evt13, Evt19 share most of their row
    S.STA2: A.AA_1,
    S.STA3: A.AA_8,
    S.STA5: A.AA_8,
    S.STA6: A.AA_8,
    S.STA7: A.AA_8,
    S.STA8: A.AA_8,
    S.STA9: A.AA_8,
    S.STA10: A.AA_8,
    S.STA11: A.AA_8,
    S.STA12: A.AA_8,
    S.STA13: A.AA_6,
}

# States with an open transport connection; Sta4 (connection being opened) receives no
# PDU, which is why the received-PDU rows leave it out, as Table 9-10 does.
_CONNECTED = [s for s in S if s not in (S.STA1, S.STA4)]
_USER_ABORTABLE = [s for s in _CONNECTED if s not in (S.STA2, S.STA13)]

# PS3.8 Table 9-10, by event.
TRANSITIONS: dict[Event, dict[State, Action]] = {
    E.EVT1: {S.STA1: A.AE_1},
    E.EVT2: {S.STA4: A.AE_2},
    E.EVT3: {**_RECEIVED_PDU_ROW, S.STA5: A.AE_3},
    E.EVT4: {**_RECEIVED_PDU_ROW, S.STA5: A.AE_4},
    E.EVT5: {S.STA1: A.AE_5},
    E.EVT6: {**_RECEIVED_PDU_ROW, S.STA2: A.AE_6, S.STA13: A.AA_7},
    E.EVT7: {S.STA3: A.AE_7},
    E.EVT8: {S.STA3: A.AE_8},
    E.EVT9: {S.STA6: A.DT_1, S.STA8: A.AR_7},
    E.EVT10: {**_RECEIVED_PDU_ROW, S.STA6: A.DT_2, S.STA7: A.AR_6},
    E.EVT11: {S.STA6: A.AR_1},
    E.EVT12: {**_RECEIVED_PDU_ROW, S.STA6: A.AR_2, S.STA7: A.AR_8},
    E.EVT13: {**_RECEIVED_PDU_ROW, S.STA7: A.AR_3, S.STA10: A.AR_10, S.STA11: A.AR_3},
    E.EVT14: {S.STA8: A.AR_4, S.STA9: A.AR_9, S.STA12: A.AR_4},
    E.EVT15: {**{s: A.AA_1 for s in _USER_ABORTABLE}, S.STA4: A.AA_2},
    E.EVT16: {**{s: A.AA_3 for s in _CONNECTED}, S.STA2: A.AA_2, S.STA13: A.AA_2},
    E.EVT17: {**{s: A.AA_4 for s in _CONNECTED}, S.STA4: A.AA_4, S.STA2: A.AA_5, S.STA13: A.AR_5},
    E.EVT18: {S.STA2: A.AA_2, S.STA13: A.AA_2},
    E.EVT19: {**_RECEIVED_PDU_ROW, S.STA13: A.AA_7},
}


def lookup(state: State, event: Event) -> Action | None:
    """The action of Table 9-10 for this state and event, or None for a blank cell."""
    return TRANSITIONS[event].get(state)


def next_state(action: Action, *, requestor: bool, acceptable: bool = True) -> State:
    """The state that follows `action` (PS3.8 Tables 9-6 to 9-9)."""
    if action is A.AE_6:  # acceptable to the provider: indication, else A-ASSOCIATE-RJ
        return S.STA3 if acceptable else S.STA13
    if action is A.AR_8:  # release collision: the requestor goes to Sta9, the acceptor Sta10
        return S.STA9 if requestor else S.STA10
    return NEXT_STATE[action]
