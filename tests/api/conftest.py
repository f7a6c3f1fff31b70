"""tests/api: the controller API against a real daemon in the lab (testkit/api.py).

The console's driving helpers (tests/ui/drive.py) are importable here too, for
the tests that check what the console shows of the API.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ui"))
