"""`python -m bench.fastpath`: see bench/fastpath/__init__.py."""

import sys

from bench.fastpath.run import main

sys.exit(main())
