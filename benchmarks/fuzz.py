"""Long fuzz run: random architectures through ``shrinkage.compact``, outcomes counted.

    python benchmarks/fuzz.py --models 5000 --seed 0 [--capture fx] [--out results/fuzz.json]

Each seed builds one random model (``tests/support/random_models.py``), compacts it on
its example inputs and compares it with the original on fresh inputs. Writes the
command, torch version, counts per outcome and the first examples of every class that
is not exact; the file is replaced atomically every ``--flush`` models, so an
interrupted run leaves a valid partial result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shrinkage.compact.choice import ByMacs, set_default_policy  # noqa: E402

from support.random_models import EXACT, fuzz_one  # noqa: E402

EXAMPLES_PER_CLASS = 5


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="first seed; model i uses seed + i")
    parser.add_argument("--capture", choices=("fx", "export", "auto"), default="fx")
    parser.add_argument("--out", type=Path, default=Path("results/fuzz.json"))
    parser.add_argument("--flush", type=int, default=100, help="rewrite the output every this many models")
    args = parser.parse_args(argv)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    set_default_policy(ByMacs())
    torch.set_num_threads(1)
    counts: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    start = time.monotonic()

    def report(done: int) -> dict[str, Any]:
        return {
            "command": "python benchmarks/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "capture": args.capture,
            "first_seed": args.seed,
            "models": done,
            "requested": args.models,
            "seconds": round(time.monotonic() - start, 1),
            "counts": dict(counts.most_common()),
            "examples": examples,
        }

    for i in range(args.models):
        outcome = fuzz_one(args.seed + i, capture=args.capture)
        counts[outcome.kind] += 1
        if outcome.kind != EXACT:
            kept = examples.setdefault(outcome.kind, [])
            if len(kept) < EXAMPLES_PER_CLASS:
                kept.append(outcome.as_dict())
        if (i + 1) % args.flush == 0 or i + 1 == args.models:
            _write_atomically(args.out, report(i + 1))
            print(f"{i + 1} models, {time.monotonic() - start:.0f} s: {dict(counts)}", flush=True)


if __name__ == "__main__":
    main()
