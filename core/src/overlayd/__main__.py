"""``python -m overlayd``: the ``overlayd`` command (``serve``, ``drivers``, ``demo``)."""

from __future__ import annotations

import sys

from overlayd.cli.overlayd import overlayd_main

if __name__ == "__main__":
    sys.exit(overlayd_main())
