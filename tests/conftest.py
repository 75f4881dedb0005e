"""Suite-wide settings."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # parallel workers already fill the cores; several intra-op threads each would make
    # them spin against one another (a 0.5 s test then takes 20 s)
    torch.set_num_threads(1)

# the measured choice of each compacted layer's form depends on the machine and its load;
# the suite asks for the deterministic one (fewest MACs), except where a test injects a timer
from shrinkage.compact.choice import ByMacs, set_default_policy  # noqa: E402

set_default_policy(ByMacs())
