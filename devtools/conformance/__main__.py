import sys

from devtools.conformance.run import main

sys.exit(main())
