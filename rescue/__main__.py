"""`python -m rescue` is the same as the `rescue` command."""

import sys

from rescue.cli import main

sys.exit(main())
