"""Import a script of ``benchmarks/`` (not a package) so tests check what it really runs."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@cache
def load_benchmark(stem: str) -> ModuleType:
    """``benchmarks/<stem>.py`` as a module, imported once."""
    path = BENCHMARKS / f"{stem}.py"
    if str(BENCHMARKS) not in sys.path:  # run as a script, its directory is on the path: siblings import
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(stem, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module
