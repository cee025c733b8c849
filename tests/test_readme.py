"""The README's library examples run as written (with a real port and real files)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import SAMPLE_FILES, Processes, dimse_command, free_port, stored_files

README = Path(__file__).parent.parent / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_examples_store_what_they_say(processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "archive"
    processes.server(dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1"), port)
    exam = tmp_path / "exam"
    exam.mkdir()
    for path in SAMPLE_FILES[2:5]:
        (exam / path.name).write_bytes(path.read_bytes())
    first, second = _examples()
    first = first.replace('["a.dcm", "b.dcm"]', repr([str(p) for p in SAMPLE_FILES[:2]]))
    second = second.replace('"pacs", 104', f'"127.0.0.1", {port}').replace('"PACS"', '"DIMSE"')
    second = second.replace('"exam/"', repr(str(exam)))
    for code in (first.replace("11112", str(port)), second):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    assert len(stored_files(out)) == 5
    assert "0000" in result.stdout or "Success" in result.stdout
