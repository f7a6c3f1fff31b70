"""`python frozen_in_terminal.py RECORDING.json [PANE]`: the console on a recorded daemon, in this terminal.

test_hostile_text.py runs it on a pty with a recording whose names hold
terminal control sequences and markup, and reads every byte it writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from frozen import FrozenSource, frozen_console

if __name__ == "__main__":
    app = frozen_console(FrozenSource(Path(sys.argv[1])), pane=sys.argv[2] if len(sys.argv) > 2 else "overview")
    app.run()
