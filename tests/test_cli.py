"""Bad usage of the `dimse` command: one line on stderr and exit code 2, never a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import python_output
from dimse import __version__
from dimse.cli import _table, _uid, build_parser, main

BAD_USAGE = [
    [],
    ["frobnicate"],
    ["echo", "127.0.0.1"],
    ["echo", "127.0.0.1", "99999"],
    ["echo", "-aet", "A_TITLE_LONGER_THAN_16", "127.0.0.1", "104"],
    ["store", "127.0.0.1", "104", "/no/such/file.dcm"],
    ["store", "--async-ops", "0", "127.0.0.1", "104", "x"],
    ["store", "--propose", "jpeg", "127.0.0.1", "104", "x"],
    ["serve", "--layout", "spiral"],
    ["serve", "-pdu", "100"],
    ["serve", "--require-identity"],
    ["serve", "--tls-key", "key.pem"],
    ["serve", "--accept-sop-class", "NotAKeyword"],
    ["serve", "--config", "/no/such/config.toml"],
    ["serve", "--max-buffered", "0"],
    ["serve", "--max-buffered", "1.5"],
    ["serve", "--max-buffered", "lots"],
    ["serve", "--allow", "CT1@ct-scanner.example"],
    ["serve", "--allow", "CT1@10.0.0.300"],
    ["serve", "--allow", "@10.0.0.3"],
    ["index", "check", "-od", "/no/such/archive"],
    ["ls", "-od", "/no/such/archive"],
    ["echo", "--password", "secret", "127.0.0.1", "104"],
]


@pytest.mark.parametrize("argv", BAD_USAGE, ids=" ".join)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # where `dimse serve` would create ./DICOM
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # a usage error creates nothing


def test_an_unknown_event_loop_is_bad_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIMSE_EVENT_LOOP", "tokio")
    assert main(["echo", "127.0.0.1", "104"]) == 2
    err = capsys.readouterr().err
    assert err == "dimse: DIMSE_EVENT_LOOP=tokio: expected uvloop or asyncio\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"dimse {__version__}"


def test_keywords_name_sop_classes() -> None:
    assert _uid("CTImageStorage") == "1.2.840.10008.5.1.4.1.1.2"
    assert _uid("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(("command", "numpy"), [("serve", False), ("echo", False), ("store", True)])
def test_only_the_sender_loads_numpy(command: str, numpy: bool) -> None:
    """pydicom imports numpy when it can; only `store` may decode pixel data (and
    imports pydicom only then: the import below stands for that)."""
    code = (
        "import sys\n"
        f"sys.argv = ['dimse', {command!r}, '--help']\n"
        "from dimse.launcher import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import pydicom\n"
        "print(sys.modules.get('numpy') is not None, sys.modules.get('requests') is not None)\n"
    )
    assert python_output(code).split()[-2:] == [str(numpy), "False"]


def test_max_buffered_is_given_in_mib() -> None:
    args = build_parser().parse_args(["serve", "--max-buffered", "64"])
    assert args.max_buffered == 64 << 20
    assert build_parser().parse_args(["serve"]).max_buffered == 256 << 20


def test_ls_columns_line_up_with_wide_and_combining_characters() -> None:
    """Patient names in CJK character sets take two terminal cells a character,
    combining accents none: `dimse ls` pads by cells, not by characters."""
    rows = [
        ("PATIENT ID", "PATIENT NAME", "MB"),
        ("H31", "Yamada^Tarou=山田^太郎", "0.1"),  # 13 + 4 + 1 + 4 = 22 cells
        ("GERM", "Äneas^Rüdiger", "0.2"),
        ("CMB", "Jose\u0301", "1.0"),  # José with a combining acute: 4 cells
    ]
    assert _table(rows) == [
        "PATIENT ID  PATIENT NAME" + " " * 10 + "  MB ",
        "H31" + " " * 7 + "  Yamada^Tarou=山田^太郎  0.1",
        "GERM" + " " * 6 + "  Äneas^Rüdiger" + " " * 9 + "  0.2",
        "CMB" + " " * 7 + "  Jose\u0301" + " " * 18 + "  1.0",
    ]
