"""What the server does with a thread stuck in a foreign network namespace: it exits.

Worker and reaper threads enter other namespaces with setns(2), per thread
(node_plugin.kernel.netns). If one cannot come back, every later request it serves would
create links in the wrong namespace, silently; exiting lets the node restart the server
(the shims queue DELs meanwhile) and is the only answer that corrupts nothing.
"""

from __future__ import annotations

import os
from typing import NoReturn

EXIT_STRANDED = 70  # EX_SOFTWARE


def exit_stranded(thread: str) -> NoReturn:
    """Ends the whole process at once, without running anything else in this thread."""
    os.write(2, f"cni-server: cannot return a {thread} to its netns; exiting\n".encode())
    os._exit(EXIT_STRANDED)
