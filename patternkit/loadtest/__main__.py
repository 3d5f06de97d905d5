"""`python -m patternkit.loadtest`: see `patternkit.loadtest.cli`."""

import sys

from patternkit.loadtest.cli import main

sys.exit(main())
