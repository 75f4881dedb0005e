"""Training speed of ResNet-20 on 3x32x32 images on this CPU: which set-up trains fastest.

Usage::

    python benchmarks/train_speed.py                  # writes results/train_speed/resnet20.{json,md}
    python benchmarks/train_speed.py --quick          # every path in about a minute (temp dir)

A step is what :class:`shrinkage.train.Trainer` does per batch: take a shuffled batch of
128 from 50,000 images held in memory as one float tensor, the pad-4 crop and flip
(:func:`shrinkage.data.cifar_jpeg.random_crop_flip`), forward, cross-entropy, backward,
SGD with momentum and weight decay. The images are random (the step's cost does not
depend on their values), so the benchmark needs no dataset.

Variants, each with its own copy of the same initial model and optimizer:

- ``eager`` -- the set-up before this benchmark: NCHW, ``torch.get_num_threads()`` threads;
- ``eager, 1 thread`` -- whether the second core pays;
- ``channels_last`` -- model and batches in NHWC, which oneDNN convolutions prefer;
- ``compiled`` and ``compiled, channels_last`` -- ``torch.compile`` (inductor) of the model;
  its compile time is reported apart (it is paid once per run; measured with an empty
  inductor cache, as on a first run).

Correctness before speed: from the same weights and the same batch, each variant's
gradients are compared with a float64 computation of the same step (per parameter, the
relative L2 error; the largest over parameters is reported). Float32 itself is off by
about 1e-3 there (round-off grows through twenty BatchNorm layers), so the scale is the
eager float32 set-up's own error: a variant more than ``ERROR_FACTOR`` times less
accurate than it is reported as wrong and never counted as fastest.

Timing: after a warm-up, the variants run in rounds of ``--steps`` steps each, in an
order shuffled every round (machine drift reaches all alike). Per variant: median,
minimum and inter-quartile spread of the step time, and seconds per epoch
(391 steps: 50,000 / 128 rounded up) from the median. The set-up chosen is the simplest
correct one within 2% of the fastest correct median. The load average at the start is
recorded; time on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shrinkage.data.cifar_jpeg import random_crop_flip
from shrinkage.metrics.timing import load_average, timing_stats
from shrinkage.zoo.resnet_cifar import resnet20

TRAIN_IMAGES = 50_000
BATCH = 128
STEPS_PER_EPOCH = math.ceil(TRAIN_IMAGES / BATCH)
ERROR_FACTOR = 10.0
NOISE = 0.02
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    label: str
    channels_last: bool
    compiled: bool
    threads: int


@dataclass
class Prepared:
    variant: Variant
    step: Callable[[], float]
    compile_s: float
    loss_difference: float
    gradient_error: float


def variants(threads: int) -> list[Variant]:
    found = [
        Variant("eager", False, False, threads),
        Variant("channels_last", True, False, threads),
        Variant("compiled", False, True, threads),
        Variant("compiled, channels_last", True, True, threads),
    ]
    if threads > 1:
        found.insert(1, Variant("eager, 1 thread", False, False, 1))
    return found


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    reference = b.to(a.dtype)
    return float((a - reference).norm() / reference.norm().clamp_min(1e-30))


def _gradients(
    model: nn.Module, forward: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(images), labels)
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def prepare(variant: Variant, initial: nn.Module, data: torch.Tensor, labels: torch.Tensor, seed: int) -> Prepared:
    torch.set_num_threads(variant.threads)
    model = copy.deepcopy(initial).train()
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = torch.compile(model) if variant.compiled else model  # type: ignore[assignment]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, data.shape[0], (BATCH,), generator=generator)
        images = random_crop_flip(data.index_select(0, index), generator)
        if variant.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.index_select(0, index)

    # the same first batch for every variant (its own generator restarts below)
    check_generator = torch.Generator().manual_seed(12345)
    index = torch.randint(0, data.shape[0], (BATCH,), generator=check_generator)
    check_images = random_crop_flip(data.index_select(0, index), check_generator)
    started = time.perf_counter()
    # the first call compiles (forward and backward); timed apart
    fed = check_images.contiguous(memory_format=torch.channels_last) if variant.channels_last else check_images
    loss, grads = _gradients(model, forward, fed, labels[index])
    compile_s = time.perf_counter() - started if variant.compiled else 0.0
    reference_model = copy.deepcopy(initial).double().train()
    reference_loss, reference_grads = _gradients(reference_model, reference_model, check_images.double(), labels[index])
    gradient_error = max(_relative(g, r) for g, r in zip(grads, reference_grads, strict=True))
    # BatchNorm running stats moved during the checks; restore them so every variant times the same model
    model.load_state_dict(initial.state_dict())

    def step() -> float:
        images, targets = batch()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(images), targets)
        loss.backward()
        optimizer.step()
        return float(loss)

    return Prepared(variant, step, compile_s, abs(loss - reference_loss) / abs(reference_loss), gradient_error)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    default_threads = torch.get_num_threads()
    load = load_average()
    initial = resnet20()
    data = torch.randn(args.images, 3, 32, 32)
    labels = torch.randint(0, 10, (args.images,))
    prepared = [prepare(v, initial, data, labels, seed=i) for i, v in enumerate(variants(default_threads))]
    for p in prepared:  # warm-up: allocator, oneDNN primitive caches
        torch.set_num_threads(p.variant.threads)
        for _ in range(3):
            p.step()
    samples: dict[str, list[float]] = {p.variant.label: [] for p in prepared}
    order = list(prepared)
    shuffler = random.Random(0)
    for _ in range(args.rounds):
        shuffler.shuffle(order)
        for p in order:
            torch.set_num_threads(p.variant.threads)
            started = time.perf_counter()
            for _ in range(args.steps):
                p.step()
            samples[p.variant.label].append((time.perf_counter() - started) * 1e3 / args.steps)
    torch.set_num_threads(default_threads)
    rows = []
    for p in prepared:
        stats = timing_stats(samples[p.variant.label], calls_per_round=args.steps)
        rows.append(
            {
                "variant": p.variant.label,
                "channels_last": p.variant.channels_last,
                "compiled": p.variant.compiled,
                "threads": p.variant.threads,
                "step_ms": stats.as_dict(),
                "epoch_s": round(stats.median_ms * STEPS_PER_EPOCH / 1e3, 1),
                "compile_s": round(p.compile_s, 1),
                "loss_error": p.loss_difference,
                "gradient_error": p.gradient_error,
            }
        )
    eager_error = rows[0]["gradient_error"]
    for row in rows:
        row["correct"] = row["gradient_error"] <= ERROR_FACTOR * eager_error
    base = rows[0]["step_ms"]["median_ms"]
    for row in rows:
        row["speedup"] = round(base / row["step_ms"]["median_ms"], 3)
    fastest = choose(rows)
    return {
        "benchmark": "train_speed",
        "model": "resnet20",
        "batch_size": BATCH,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "load_average_at_start": load,
        "torch": torch.__version__,
        "machine": {"processor": platform.processor() or platform.machine(), "threads_default": default_threads},
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "python benchmarks/train_speed.py" + (" --quick" if args.quick else ""),
        "rows": rows,
        "fastest": fastest["variant"],
        "complete": not args.quick,
    }


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The simplest correct set-up within ``NOISE`` of the fastest correct median: a gain
    smaller than the timing noise is not worth a setting."""
    correct = [r for r in rows if r["correct"]]
    best = min(r["step_ms"]["median_ms"] for r in correct)
    close = [r for r in correct if r["step_ms"]["median_ms"] <= best * (1 + NOISE)]
    return min(close, key=lambda r: (int(r["compiled"]) + int(r["channels_last"]), r["step_ms"]["median_ms"]))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"ResNet-20 training step, batch {result['batch_size']}, {result['rounds']} rounds of "
        f"{result['steps_per_round']} steps, load average at start {result['load_average_at_start']}",
        "",
        "| set-up | threads | step median (ms) | min | spread | s / epoch | speed-up | compile (s) "
        "| grad. error vs float64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = r["step_ms"]
        mark = "" if r["correct"] else " (wrong)"
        lines.append(
            f"| {r['variant']}{mark} | {r['threads']} | {s['median_ms']:.1f} | {s['min_ms']:.1f} | "
            f"{100 * (s['spread'] or 0):.1f}% | {r['epoch_s']} | {r['speedup']:.2f}x | {r['compile_s']} | "
            f"{r['gradient_error']:.1e} |"
        )
    lines += [
        "",
        f"Chosen: {result['fastest']} (the simplest correct set-up within {NOISE:.0%} of the fastest "
        "correct median). Gradient error: largest relative L2 error of a "
        f"parameter's gradient against float64; a set-up more than {ERROR_FACTOR:g}x less accurate than "
        "eager float32 is marked wrong.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 steps on 2,000 images, into a temp dir")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.images = 2, 2, 2000
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "results" / "train_speed")
    # an empty compile cache, so that the compile time is what a first run pays
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    result = run(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resnet20.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "resnet20.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
