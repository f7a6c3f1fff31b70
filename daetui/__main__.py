"""`python -m daetui` is the `daetui` command."""

import sys

from daetui.cli import main

sys.exit(main())
