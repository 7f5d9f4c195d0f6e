"""The `optforge` command behaves like a Unix tool: piping it into a reader that stops early is no error."""

from __future__ import annotations

import subprocess
import sys


def test_show_command_piped_into_a_reader_that_stopped_ends_quietly():
    """`optforge show nadam | head -2`: head exits after two lines, our next write gets EPIPE. The reader's
    end is closed before the command prints anything, so the write must fail, whatever the timing."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "optforge.cli", "show", "nadam"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    code = proc.wait()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, (
        f"expected no traceback when stdout's reader is gone; received on stderr:\n{stderr}"
    )
    assert code == 141, f"expected the exit status of a process ended by SIGPIPE (141); received {code}"


def test_show_command_through_head_prints_the_first_lines():
    """The shell pipeline itself, as the issue wrote it."""
    out = subprocess.run(
        f"{sys.executable} -m optforge.cli show nadam | head -2",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines()[0].startswith("Nadam"), f"expected Nadam's header; received {out.stdout!r}"
    assert len(out.stdout.splitlines()) == 2
    assert "Traceback" not in out.stderr, f"expected no traceback; received on stderr:\n{out.stderr}"
