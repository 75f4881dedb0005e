"""Where the real dataset files are for the tests that read them (never downloaded).

``$SHRINKAGE_DATA_DIR`` when it holds the file; else a ``shared/datasets`` folder beside
the checkout (``<checkout>/../shared/datasets``), the layout of a development machine that
keeps one copy of the datasets next to its working trees. Tests that need a file neither
place holds are skipped with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
BESIDE_CHECKOUT = CHECKOUT.parent / "shared" / "datasets"


def data_dir_holding(relative: str) -> Path | None:
    """The data directory that holds ``relative`` (a path inside it), or None."""
    env = os.environ.get("SHRINKAGE_DATA_DIR", "").strip()
    for root in ([Path(env)] if env else []) + [BESIDE_CHECKOUT]:
        if (root / relative).is_file():
            return root
    return None
