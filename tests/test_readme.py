"""The README's quick start is code users paste first: it must run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_quick_start_runs_and_completes_the_order(tmp_path: Path) -> None:
    quick_start = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert quick_start is not None, "README.md lost its quick start"
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start.group(1))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("completed ")
    assert "'charge-payment': {'charge_id': 'ch_" in done.stdout
    assert (tmp_path / "orders.db").exists(), "the quick start should persist to SQLite"
