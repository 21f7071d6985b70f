"""Importing the SDK never loads torch or grpc (it installs with the base package)."""

from __future__ import annotations

import subprocess
import sys


def test_import_loads_neither_torch_nor_grpc() -> None:
    code = (
        "import sys, isthmus.client, isthmus.client.sync\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'grpc'))\n"
        "other = sorted(m for m in sys.modules if m.startswith('isthmus.') and m.split('.')[1] "
        "not in ('client', 'protocol'))\n"
        "print(heavy, other)\n"
        "sys.exit(1 if heavy or other else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
