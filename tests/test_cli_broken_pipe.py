"""A listing written into a pipe whose reader has gone (`deployzoo models --json | head -1`) ends without a
traceback: exit status 141 (as a shell reports SIGPIPE), nothing on stderr."""
from __future__ import annotations

import subprocess
import sys

# stdout is a pipe with its read end closed before anything is written: the first write past the buffer fails
CHILD = """
import os, sys
r, w = os.pipe()
os.close(r)
os.dup2(w, 1)
sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: the write fails inside main
from deployzoo.cli import main
sys.exit(main(["models", "--json"]))
"""


def test_a_closed_pipe_is_not_a_traceback():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141
