"""``python -m overlayd_cni``: the same as the ``overlayd-cni`` executable."""

from __future__ import annotations

import sys

from overlayd_cni.main import main

sys.exit(main())
