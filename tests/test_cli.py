"""Bad usage of the `dimse` command: one line on stderr and exit code 2, never a trace."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest

from conftest import python_output
from dimse import __version__
from dimse.cli import _Bar, _PrintableFormatter, _table, _uid, build_parser, main
from dimse.sender import Kind, StoreResult

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


def test_log_lines_show_a_peer_s_control_characters() -> None:
    """An AE title or UID with an escape sequence or a newline, quoted in a log line,
    can neither drive the terminal nor forge a line; a traceback keeps its lines."""
    formatter = _PrintableFormatter("%(levelname)s: %(message)s")
    record = logging.LogRecord(
        "dimse", logging.WARNING, __file__, 1, "%s: C-STORE %s", ("EVIL\x1b[2J", "1.2\nFAKE"), None
    )
    assert formatter.format(record) == "WARNING: EVIL\\x1b[2J: C-STORE 1.2\\x0aFAKE"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert formatter.format(record).count("\n") >= 3


def test_the_progress_bar_prints_problems_as_text_not_markup() -> None:
    """rich reads "[...]" as markup: a file named x[/].dcm stopped the sender."""
    from rich.console import Console
    from rich.progress import Progress

    out = io.StringIO()
    with Progress(console=Console(file=out, width=200)) as progress:
        bar = _Bar(progress)
        bar(StoreResult("/data/x[/].dcm", "1.2", Kind.FAILURE, "A900 mismatch", 0xA900, "a\x1bb"))
    assert "/data/x[/].dcm: A900 mismatch (a\\x1bb)" in out.getvalue()
