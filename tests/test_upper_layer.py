"""The upper layer state machine against PS3.8 Table 9-10, cell by cell."""

from __future__ import annotations

import pytest

from dimse.upper_layer import (
    NEXT_STATE,
    TRANSITIONS,
    Action,
    Event,
    State,
    lookup,
    next_state,
)

# PS3.8 Table 9-10 as printed: one row per event, one column per state Sta1..Sta13;
# "-" is a blank cell. Written from the standard, independently of upper_layer.py.
TABLE_9_10 = """
        Sta1 Sta2 Sta3 Sta4 Sta5 Sta6 Sta7 Sta8 Sta9 Sta10 Sta11 Sta12 Sta13
Evt1    AE-1 -    -    -    -    -    -    -    -    -     -     -     -
Evt2    -    -    -    AE-2 -    -    -    -    -    -     -     -     -
Evt3    -    AA-1 AA-8 -    AE-3 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8  AA-8  AA-6
Evt4    -    AA-1 AA-8 -    AE-4 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8  AA-8  AA-6
Evt5    AE-5 -    -    -    -    -    -    -    -    -     -     -     -
Evt6    -    AE-6 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8  AA-8  AA-7
Evt7    -    -    AE-7 -    -    -    -    -    -    -     -     -     -
Evt8    -    -    AE-8 -    -    -    -    -    -    -     -     -     -
Evt9    -    -    -    -    -    DT-1 -    AR-7 -    -     -     -     -
Evt10   -    AA-1 AA-8 -    AA-8 DT-2 AR-6 AA-8 AA-8 AA-8  AA-8  AA-8  AA-6
Evt11   -    -    -    -    -    AR-1 -    -    -    -     -     -     -
Evt12   -    AA-1 AA-8 -    AA-8 AR-2 AR-8 AA-8 AA-8 AA-8  AA-8  AA-8  AA-6
Evt13   -    AA-1 AA-8 -    AA-8 AA-8 AR-3 AA-8 AA-8 AR-10 AR-3  AA-8  AA-6
Evt14   -    -    -    -    -    -    -    AR-4 AR-9 -     -     AR-4  -
Evt15   -    -    AA-1 AA-2 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1  AA-1  AA-1  -
Evt16   -    AA-2 AA-3 -    AA-3 AA-3 AA-3 AA-3 AA-3 AA-3  AA-3  AA-3  AA-2
Evt17   -    AA-5 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4  AA-4  AA-4  AR-5
Evt18   -    AA-2 -    -    -    -    -    -    -    -     -     -     AA-2
Evt19   -    AA-1 AA-8 -    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8  AA-8  AA-7
"""


def _cells() -> list[tuple[Event, State, Action | None]]:
    header, *rows = TABLE_9_10.strip().splitlines()
    states = [State[f"STA{name[3:]}"] for name in header.split()]
    cells = []
    for row in rows:
        event_name, *actions = row.split()
        assert len(actions) == len(states)
        event = Event[f"EVT{event_name[3:]}"]
        for state, action in zip(states, actions, strict=True):
            cells.append(
                (event, state, None if action == "-" else Action[action.replace("-", "_")])
            )
    return cells


CELLS = _cells()


def test_transcription_covers_every_cell() -> None:
    assert len(CELLS) == len(Event) * len(State) == 19 * 13


@pytest.mark.parametrize(
    ("event", "state", "action"), CELLS, ids=[f"{e.name}-{s.name}" for e, s, _ in CELLS]
)
def test_every_cell_of_table_9_10(event: Event, state: State, action: Action | None) -> None:
    assert lookup(state, event) is action


def test_no_cell_outside_the_table() -> None:
    filled = {(e, s) for e, s, a in CELLS if a is not None}
    assert {(e, s) for e, row in TRANSITIONS.items() for s in row} == filled


# Next states of Tables 9-6 to 9-9.
EXPECTED_NEXT = {
    "AE-1": "STA4", "AE-2": "STA5", "AE-3": "STA6", "AE-4": "STA1", "AE-5": "STA2",
    "AE-7": "STA6", "AE-8": "STA13", "DT-1": "STA6", "DT-2": "STA6", "AR-1": "STA7",
    "AR-2": "STA8", "AR-3": "STA1", "AR-4": "STA13", "AR-5": "STA1", "AR-6": "STA7",
    "AR-7": "STA8", "AR-9": "STA11", "AR-10": "STA12", "AA-1": "STA13", "AA-2": "STA1",
    "AA-3": "STA1", "AA-4": "STA1", "AA-5": "STA1", "AA-6": "STA13", "AA-7": "STA13",
    "AA-8": "STA13",
}  # fmt: skip


@pytest.mark.parametrize(("action", "state"), EXPECTED_NEXT.items())
@pytest.mark.parametrize("requestor", [True, False])
def test_next_state_of_each_action(action: str, state: str, requestor: bool) -> None:
    assert next_state(Action[action.replace("-", "_")], requestor=requestor) is State[state]


def test_every_unconditional_action_has_a_next_state() -> None:
    assert set(NEXT_STATE) == set(Action) - {Action.AE_6, Action.AR_8}


def test_ae_6_depends_on_the_provider_accepting_the_request() -> None:
    assert next_state(Action.AE_6, requestor=False, acceptable=True) is State.STA3
    assert next_state(Action.AE_6, requestor=False, acceptable=False) is State.STA13


def test_ar_8_release_collision_depends_on_the_role() -> None:
    assert next_state(Action.AR_8, requestor=True) is State.STA9
    assert next_state(Action.AR_8, requestor=False) is State.STA10


def _walk(steps: list[tuple[Event, Action]], start: State, *, requestor: bool) -> State:
    state = start
    for event, action in steps:
        assert lookup(state, event) is action, (state, event)
        state = next_state(action, requestor=requestor)
    return state


def test_requestor_establishes_transfers_and_releases() -> None:
    steps = [
        (Event.EVT1, Action.AE_1),  # A-ASSOCIATE request: connect
        (Event.EVT2, Action.AE_2),  # connected: send A-ASSOCIATE-RQ
        (Event.EVT3, Action.AE_3),  # A-ASSOCIATE-AC received
        (Event.EVT9, Action.DT_1),
        (Event.EVT10, Action.DT_2),
        (Event.EVT11, Action.AR_1),  # A-RELEASE request
        (Event.EVT10, Action.AR_6),  # data may still arrive while awaiting the RP
        (Event.EVT13, Action.AR_3),  # A-RELEASE-RP received: close
    ]
    assert _walk(steps, State.STA1, requestor=True) is State.STA1


def test_acceptor_establishes_transfers_and_releases() -> None:
    steps = [
        (Event.EVT5, Action.AE_5),  # transport connection indication: start ARTIM
        (Event.EVT6, Action.AE_6),  # A-ASSOCIATE-RQ received (acceptable)
        (Event.EVT7, Action.AE_7),  # accept
        (Event.EVT10, Action.DT_2),
        (Event.EVT9, Action.DT_1),
        (Event.EVT12, Action.AR_2),  # A-RELEASE-RQ received
        (Event.EVT9, Action.AR_7),  # the acceptor may still send data
        (Event.EVT14, Action.AR_4),  # A-RELEASE response: send RP, start ARTIM
        (Event.EVT17, Action.AR_5),  # the requestor closed the connection
    ]
    assert _walk(steps, State.STA1, requestor=False) is State.STA1


def test_rejections() -> None:
    requestor = [(Event.EVT1, Action.AE_1), (Event.EVT2, Action.AE_2), (Event.EVT4, Action.AE_4)]
    assert _walk(requestor, State.STA1, requestor=True) is State.STA1
    acceptor = [
        (Event.EVT5, Action.AE_5),
        (Event.EVT6, Action.AE_6),
        (Event.EVT8, Action.AE_8),  # reject: send RJ, start ARTIM
        (Event.EVT18, Action.AA_2),  # ARTIM expired: close
    ]
    assert _walk(acceptor, State.STA1, requestor=False) is State.STA1


def test_release_collision_on_both_sides() -> None:
    requestor = [
        (Event.EVT11, Action.AR_1),  # Sta6 -> Sta7
        (Event.EVT12, Action.AR_8),  # the peer's RQ crosses ours: Sta9
        (Event.EVT14, Action.AR_9),  # our user answers: send RP, Sta11
        (Event.EVT13, Action.AR_3),  # the peer's RP: confirmation, close
    ]
    assert _walk(requestor, State.STA6, requestor=True) is State.STA1
    acceptor = [
        (Event.EVT11, Action.AR_1),
        (Event.EVT12, Action.AR_8),  # Sta10
        (Event.EVT13, Action.AR_10),  # the requestor's RP: confirmation, Sta12
        (Event.EVT14, Action.AR_4),  # our RP, ARTIM, Sta13
        (Event.EVT17, Action.AR_5),
    ]
    assert _walk(acceptor, State.STA6, requestor=False) is State.STA1


def test_aborts() -> None:
    assert _walk([(Event.EVT15, Action.AA_1)], State.STA6, requestor=True) is State.STA13
    assert _walk([(Event.EVT18, Action.AA_2)], State.STA13, requestor=True) is State.STA1
    assert _walk([(Event.EVT16, Action.AA_3)], State.STA6, requestor=False) is State.STA1
    assert _walk([(Event.EVT17, Action.AA_4)], State.STA6, requestor=False) is State.STA1
    assert _walk([(Event.EVT15, Action.AA_2)], State.STA4, requestor=True) is State.STA1


@pytest.mark.parametrize("state", [s for s in State if s not in (State.STA1, State.STA4)])
@pytest.mark.parametrize(
    "event", [Event.EVT3, Event.EVT4, Event.EVT6, Event.EVT10, Event.EVT12, Event.EVT13]
)
def test_a_received_pdu_always_has_an_answer(state: State, event: Event) -> None:
    """Out of place, a PDU is answered AA-8 (provider abort) once an association is under way."""
    action = lookup(state, event)
    assert action is not None
    if state in (State.STA3, State.STA8, State.STA9, State.STA12):
        assert action is Action.AA_8


@pytest.mark.parametrize("state", [s for s in State if s not in (State.STA1, State.STA4)])
def test_invalid_pdu_answers(state: State) -> None:
    expected = {State.STA2: Action.AA_1, State.STA13: Action.AA_7}.get(state, Action.AA_8)
    assert lookup(state, Event.EVT19) is expected


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.STA6, Event.EVT7),  # accept with nothing to accept
        (State.STA5, Event.EVT9),  # P-DATA before the association is accepted
        (State.STA7, Event.EVT11),  # a second release request
        (State.STA6, Event.EVT14),  # a release response with no request
        (State.STA1, Event.EVT15),  # abort with no connection
        (State.STA6, Event.EVT18),  # ARTIM does not run in Sta6
    ],
)
def test_blank_cells_are_none(state: State, event: Event) -> None:
    assert lookup(state, event) is None
