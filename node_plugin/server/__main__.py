"""`python -m node_plugin.server`: the same as `cniwarden cni-server`."""

import sys

from node_plugin.server.cli import main

sys.exit(main())
