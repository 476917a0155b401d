"""The command line itself: what it does when its output goes nowhere."""
import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_closed_stdout_ends_the_command_quietly_with_the_status_of_sigpipe():
    """`forgetbench ... | head -1`: head gone, the next line cannot be written."""
    read, write = os.pipe()
    os.close(read)  # nothing will read it
    try:
        # (-v: no library to quiet, a command that starts in seconds)
        done = subprocess.run([sys.executable, "-m", "forgetbench", "plan", "-v", "--params", "7e9", "--hidden", "4096",
                               "--layers", "32", "--seq-len", "2048", "--gpu-memory", "80"],
                              cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""  # 128 + SIGPIPE, as the shell reports `yes | head -1`
