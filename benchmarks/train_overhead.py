"""Training overhead of each regularizer: time per optimizer step against plain SGD.

Usage::

    python benchmarks/train_overhead.py                 # LeNet and ResNet-20, then the rank experiment
    python benchmarks/train_overhead.py --model lenet --rounds 20 --steps 20
    python benchmarks/train_overhead.py --quick         # every code path in under a minute (temp dir)

**Step times.** LeNet (1x28x28, batch 64) and ResNet-20 (3x32x32, batch 128) train on
one fixed random batch, so no data loading is timed. Every variant has its own copy of
the same initial model and its own SGD (lr 0.01, momentum 0.9); a step is zero_grad,
forward, backward, the optimizer step and -- for the regularized variants -- the prox
(:class:`shrinkage.optim.ProximalOptimizer`). One sample is the mean step time over a
block of consecutive steps whose length is a multiple of 10, so an every-k prox
(k in 1, 5, 10) runs exactly ``block / k`` times in every sample: its cost is amortized
as in training, not hidden by a median over mostly prox-free steps. The variants run in
rounds, one block each, in an order shuffled every round, so drift of the machine's
speed (other processes, frequency) reaches all of them alike; one untimed block per
variant warms up first. Per variant: the median over rounds, its spread (25th-75th
percentile), the overhead ratio (the median over rounds of its block time divided by
plain SGD's block of the same round), and the median time
of the optimizer step alone (the gradient update plus the prox), whose difference to
plain SGD's is the prox's cost with the forward/backward noise left out. A control
variant runs plain SGD again in a second, identical copy: its ratio shows how far two
identical runners differ on this machine, and a control off by more than 5% marks the
table unreliable.

Nuclear-norm variants start from weights truncated to 10% of their rank (as after the
first epochs of compression-aware training, when the randomized SVD pays off; the
full SVD costs the same at any rank) and report the mean rank after their last prox.

**Final rank vs prox frequency.** LeNet trains on MNIST (the bundled copy) for a fixed
number of steps with a nuclear norm on conv2 and fc1, the prox every 1, 5 and 10 steps
(``every: k`` applies a k-times larger threshold every k steps) and with the
randomized SVD; reported per layer: the rank at 90% energy and the numerical rank
(``torch.linalg.matrix_rank``: singular values above ``max(m, n) * eps * sigma_max``,
i.e. the exact non-zeros up to float round-off), plus test accuracy and time per step.

Writes ``results/overhead/<model>.json``, ``<model>.md`` and ``rank.json`` / ``rank.md``
(``--quick``: a temporary directory unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.compact import rank_for_energy
from shrinkage.data import batches, load_mnist
from shrinkage.groups import Channels, CoupledChannels, Depth, Filters, Matrix, Shapes
from shrinkage.io import write_json, write_text
from shrinkage.metrics import evaluate
from shrinkage.metrics.timing import thread_environment
from shrinkage.optim import AllOf, ModuleType, NamePattern, Predicate, ProximalOptimizer, Regularizer, Rule, Selector
from shrinkage.penalties import GroupLasso, NuclearNorm, SparseGroupLasso, SvdMethod
from shrinkage.zoo import BasicBlock, LeNet, resnet20

ROOT = Path(__file__).resolve().parent.parent
LR, MOMENTUM = 0.01, 0.9
#: overhead targets checked in the tables (ratio of median step times)
TARGETS = {"group_lasso": 1.10, "nuclear_norm": 1.25}
CONTROL = "plain SGD again, an identical copy (control)"
#: a control further than this from 1.0 marks the model's table unreliable
CONTROL_TOLERANCE = 0.05
#: nuclear-norm layers of each model (LeNet: as in the compression-aware results)
NUCLEAR_LAYERS = {"lenet": ("conv2", "fc1"), "resnet20": ("layer*",)}
#: from weights at 10% rank, this strength keeps LeNet's mean rank near 10% over the run
#: (1.0 collapses it to rank 1 within 100 steps, which would flatter the randomized SVD)
NUCLEAR_STRENGTH = 0.3


@dataclass(frozen=True)
class ModelSetup:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    batch_size: int
    classifier: str


MODELS = {
    "lenet": ModelSetup("lenet", LeNet, (1, 28, 28), 64, "fc2"),
    "resnet20": ModelSetup("resnet20", resnet20, (3, 32, 32), 128, "fc"),
}


@dataclass(frozen=True)
class Variant:
    """One way of training: ``rules`` (empty: plain SGD) and what the overhead target is."""

    name: str
    rules: tuple[Rule, ...]
    family: str = ""  # "group_lasso" / "nuclear_norm": the target that applies
    low_rank_start: bool = False


@dataclass(frozen=True)
class AnyOf(Selector):
    """Modules matched by any of ``parts``."""

    parts: tuple[Selector, ...]

    def matches(self, name: str, module: nn.Module) -> bool:
        return any(p.matches(name, module) for p in self.parts)


def _weighted(setup: ModelSetup) -> Selector:
    """Every Conv2d and Linear except the classifier (its rows are the classes)."""
    return AllOf((ModuleType((nn.Conv2d, nn.Linear)), Predicate(lambda name, _m: name != setup.classifier)))


def variants(setup: ModelSetup) -> list[Variant]:
    weighted, convs = _weighted(setup), ModuleType((nn.Conv2d,))
    gl = GroupLasso(1e-4, scale_by_size=True)
    out = [
        Variant("plain SGD", ()),
        # the same work as plain SGD in its own copy: how far two identical runners differ here
        Variant(CONTROL, (), "control"),
        Variant("group Lasso, filters", (Rule(weighted, Filters(), gl),), "group_lasso"),
        Variant("group Lasso, channels", (Rule(weighted, Channels(), gl),), "group_lasso"),
        Variant("group Lasso, shapes", (Rule(convs, Shapes(), gl),), "group_lasso"),
    ]
    if setup.name == "resnet20":
        blocks = Rule(ModuleType((BasicBlock,)), Depth(), gl)
        out.append(Variant("group Lasso, depth (blocks)", (blocks,), "group_lasso"))
    coupled = CoupledChannels((1, *setup.input_shape))
    out.append(Variant("group Lasso, coupled channels", (Rule(weighted, coupled, gl),), "group_lasso"))
    out.append(Variant("sparse group Lasso, filters", (Rule(weighted, Filters(), SparseGroupLasso(1e-4)),),
                       "group_lasso"))  # fmt: skip
    named = AnyOf(tuple(NamePattern(p) for p in NUCLEAR_LAYERS[setup.name]))
    layers = AllOf((named, ModuleType((nn.Conv2d, nn.Linear))))
    for every in (1, 5, 10):
        rules = (Rule(layers, Matrix(), NuclearNorm(NUCLEAR_STRENGTH), every=every),)
        out.append(Variant(f"nuclear norm, prox every {every}", rules, "nuclear_norm", low_rank_start=True))
    for every in (1, 5):
        rules = (Rule(layers, Matrix(), NuclearNorm(NUCLEAR_STRENGTH, method=SvdMethod.RANDOMIZED), every=every),)
        out.append(Variant(f"nuclear norm, randomized SVD, every {every}", rules, "nuclear_norm", low_rank_start=True))
    return out


def _truncate_rank_(model: nn.Module, rules: Sequence[Rule], fraction: float) -> None:
    """Cut every nuclear-norm weight to ``fraction`` of its full rank (at least 1)."""
    reg = Regularizer(model, rules)
    with torch.no_grad():
        for term in reg.terms:
            m = term.grouping.gather()
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            r = max(1, round(fraction * s.numel()))
            term.grouping.scatter_((u[:, :r] * s[:r]) @ vh[:r])


def _numerical_rank(weight: Tensor) -> int:
    """Rank with torch's default tolerance for the weight's own dtype (float32 round-off of
    the prox's reconstruction is not a singular value)."""
    return int(torch.linalg.matrix_rank(weight.detach().reshape(weight.shape[0], -1)))


class Runner:
    """One variant's model and optimizer; ``step()`` returns (total seconds, optimizer-step seconds)."""

    def __init__(self, variant: Variant, initial: nn.Module, x: Tensor, y: Tensor) -> None:
        self.variant = variant
        self.model = copy.deepcopy(initial).train()
        if variant.low_rank_start:
            _truncate_rank_(self.model, variant.rules, 0.1)
        sgd = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.regularizer = Regularizer(self.model, variant.rules) if variant.rules else None
        self.optimizer: Any = ProximalOptimizer(sgd, self.regularizer) if self.regularizer else sgd
        self.x, self.y = x, y
        self.total: list[float] = []
        self.update: list[float] = []
        #: nuclear-norm matrices right after the latest prox (an every-k rule leaves full-rank
        #: weights in between), copied outside the timed section
        self.after_prox: list[Tensor] = []

    def step(self) -> tuple[float, float]:
        """One training step: (seconds in total, seconds in the optimizer step incl. the prox)."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        before = time.perf_counter()
        self.optimizer.step()
        end = time.perf_counter()
        if self.variant.family == "nuclear_norm" and self.optimizer.prox_steps % self.variant.rules[0].every == 0:
            with torch.no_grad():
                self.after_prox = [t.grouping.gather().clone() for t in self.optimizer.regularizer.terms]
        return end - start, end - before

    def block(self, steps: int) -> tuple[float, float]:
        """Mean seconds per step over ``steps`` steps (total, optimizer step)."""
        total = update = 0.0
        for _ in range(steps):
            t, u = self.step()
            total, update = total + t, update + u
        return total / steps, update / steps

    def mean_rank(self) -> float | None:
        """Mean numerical rank of the nuclear-norm matrices after the latest prox."""
        if not self.after_prox:
            return None
        return sum(_numerical_rank(m) for m in self.after_prox) / len(self.after_prox)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_model(setup: ModelSetup, rounds: int, steps: int, batch_size: int, seed: int, warmup: bool = True,
               input_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Time every variant of ``setup``; ``input_shape`` overrides the model's (quick checks)."""
    shape = input_shape or setup.input_shape
    torch.manual_seed(seed)
    initial = setup.make()
    x = torch.randn(batch_size, *shape)
    y = torch.randint(0, 10, (batch_size,))
    runners = [Runner(v, initial, x, y) for v in variants(setup)]
    for runner in runners if warmup else ():  # caches, allocator, the first (full) SVD of the randomized prox
        runner.block(steps)
    order_rng = random.Random(seed)
    for round_index in range(rounds):
        order = list(runners)
        order_rng.shuffle(order)
        for runner in order:
            total, update = runner.block(steps)
            runner.total.append(total)
            runner.update.append(update)
        print(f"  {setup.name}: round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    plain = runners[0]
    plain_median, plain_update = statistics.median(plain.total), statistics.median(plain.update)
    rows = []
    for r in runners:
        median = statistics.median(r.total)
        update = statistics.median(r.update)
        # per round against plain SGD's block of the same round: drift of the machine cancels
        ratio = statistics.median(t / p for t, p in zip(r.total, plain.total, strict=True))
        target = TARGETS.get(r.variant.family)
        rows.append({
            "variant": r.variant.name,
            "family": r.variant.family or None,
            "terms": len(r.regularizer.terms) if r.regularizer else 0,
            "rounds_timed": len(r.total),
            "median_ms": 1e3 * median,
            "p25_ms": 1e3 * _quantile(r.total, 0.25),
            "p75_ms": 1e3 * _quantile(r.total, 0.75),
            "min_ms": 1e3 * min(r.total),
            "optimizer_step_median_ms": 1e3 * update,
            "prox_added_ms": 1e3 * (update - plain_update),
            "overhead_ratio": ratio,
            "ratio_of_medians": median / plain_median,
            "prox_overhead_fraction": (update - plain_update) / plain_median,
            "target_ratio": target,
            "target_met": None if target is None else ratio <= target,
            "mean_rank_at_end": r.mean_rank(),
        })  # fmt: skip
    control = next(row["overhead_ratio"] for row in rows if row["family"] == "control")
    return {"model": setup.name, "batch_size": batch_size, "input_shape": list(shape),
            "rounds": rounds, "warmup_blocks": int(warmup), "steps_per_block": steps,
            "control_ratio": control, "reliable": abs(control - 1) <= CONTROL_TOLERANCE, "rows": rows}  # fmt: skip


def overhead_table(result: dict[str, Any]) -> str:
    lines = [
        f"**{result['model']}** (input {'x'.join(map(str, result['input_shape']))}, batch {result['batch_size']}; "
        f"per variant {result['rounds']} timed blocks of {result['steps_per_block']} steps, one block per round, "
        "order shuffled per round; time per step)",
        "",
        "| variant | terms | step median (p25-p75) ms | overhead vs plain | prox added (ms) | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    control = result.get("control_ratio")
    for row in result["rows"]:
        target = f"<= {row['target_ratio']:.2f}x" if row["target_ratio"] else "–"
        met = "–" if row["target_met"] is None else ("yes" if row["target_met"] else "**no**")
        rank = f" (mean rank at end {row['mean_rank_at_end']:.1f})" if row["mean_rank_at_end"] is not None else ""
        lines.append(
            f"| {row['variant']}{rank} | {row['terms']} | {row['median_ms']:.2f} ({row['p25_ms']:.2f}-"
            f"{row['p75_ms']:.2f}) | {row['overhead_ratio']:.3f}x | {row['prox_added_ms']:+.2f} | {target} | {met} |"
        )
    if control is not None:
        verdict = ("within" if result["reliable"] else "**outside**") + f" {CONTROL_TOLERANCE:.0%} of 1.0"
        lines += ["", f"*Overhead vs plain*: the median over rounds of the variant's block time divided by plain "
                  f"SGD's block of the same round. The control (plain SGD in a second, identical copy) came out "
                  f"{control:.3f}x, {verdict}" + ("" if result["reliable"] else ": differences of that size are "
                                                    "noise, not overhead") + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- final rank vs prox frequency


def rank_experiment(steps: int, strength: float, seed: int, limit_test: int | None) -> dict[str, Any]:
    train, test = load_mnist("train"), load_mnist("test")
    if limit_test is not None:
        test = type(test)(test.images[:limit_test], test.labels[:limit_test], test.num_classes, test.name)
    torch.manual_seed(seed)
    initial = LeNet()
    setups = [(f"prox every {k}", SvdMethod.FULL, k) for k in (1, 5, 10)]
    setups.append(("randomized SVD, every 1", SvdMethod.RANDOMIZED, 1))
    rows = []
    for label, method, every in setups:
        model = copy.deepcopy(initial).train()
        penalty = NuclearNorm(strength, method=method)
        rules = [Rule(NamePattern(n), Matrix(), penalty, every=every) for n in ("conv2", "fc1")]
        opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.02, momentum=MOMENTUM),
                                Regularizer(model, rules))  # fmt: skip
        gen = torch.Generator().manual_seed(seed)  # the same batches for every setting
        done, started = 0, time.perf_counter()
        while done < steps:
            for images, labels in batches(train, 64, shuffle=True, generator=gen, drop_last=True):
                opt.zero_grad()
                nn.functional.cross_entropy(model(images), labels).backward()
                opt.step()
                done += 1
                if done == steps:
                    break
        elapsed = time.perf_counter() - started
        row: dict[str, Any] = {"setting": label, "method": method.value, "every": every, "steps": steps,
                               "ms_per_step": 1e3 * elapsed / steps}  # fmt: skip
        for name in ("conv2", "fc1"):
            weight = getattr(model, name).weight.detach()
            w = weight.reshape(weight.shape[0], -1)
            s = torch.linalg.svdvals(w.double())
            row[name] = {"rank_90": rank_for_energy(s, 0.9), "numerical_rank": _numerical_rank(w),
                         "full_rank": min(w.shape)}  # fmt: skip
        row["test_accuracy"] = evaluate(model, batches(test, 1000, shuffle=False)).accuracy
        rows.append(row)
        print(f"  rank: {label} done", file=sys.stderr, flush=True)
    return {"model": "lenet", "dataset": "mnist", "strength": strength, "lr": 0.02, "momentum": MOMENTUM,
            "batch_size": 64, "steps": steps, "test_images": len(test), "rows": rows}  # fmt: skip


def rank_table(result: dict[str, Any]) -> str:
    lines = [
        f"**LeNet on MNIST, nuclear norm (strength {result['strength']:g}) on conv2 and fc1, {result['steps']} steps** "
        f"(test accuracy on {result['test_images']} images)",
        "",
        "| setting | conv2 rank 90% / numerical / full | fc1 rank 90% / numerical / full | test accuracy "
        "| ms per step |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = [f"{row[n]['rank_90']} / {row[n]['numerical_rank']} / {row[n]['full_rank']}" for n in ("conv2", "fc1")]
        lines.append(f"| {row['setting']} | {cells[0]} | {cells[1]} | {100 * row['test_accuracy']:.2f}% | "
                     f"{row['ms_per_step']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per model (after one warm-up block)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block (one block per variant and round), "
                        "a multiple of 10")  # fmt: skip
    parser.add_argument("--rank-steps", type=int, default=300,
                        help="steps of the rank experiment, rounded up to a multiple of 10 so every setting "
                        "ends on a prox step (0: skip it)")  # fmt: skip
    parser.add_argument("--rank-strength", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default results/overhead)")
    parser.add_argument("--quick", action="store_true",
                        help="a check, not a measurement: 1 round of 10 steps, batch 4 (ResNet-20 on 16x16), "
                        "no warm-up, 10 rank steps, one thread unless --threads")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        torch.set_num_threads(1)  # threads spinning against other processes would make a check take minutes
    if args.quick:
        args.rounds, args.steps, args.rank_steps = 1, 10, min(args.rank_steps, 10)
    if args.steps < 10 or args.steps % 10 or args.rounds < 1:
        parser.error(f"--steps must be a positive multiple of 10 and --rounds >= 1, got {args.steps} and {args.rounds}")
    args.rank_steps = -(-args.rank_steps // 10) * 10
    out = args.out or (Path(tempfile.mkdtemp(prefix="overhead-")) if args.quick else ROOT / "results" / "overhead")
    meta = {
        "command": "python benchmarks/train_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "environment": thread_environment(),
        "cpu_count": os.cpu_count(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "quick": args.quick,
    }
    print(f"torch {meta['torch']}, {meta['threads']} threads, load average {meta['load_average_at_start']}")
    names = list(MODELS) if args.model == "all" else [args.model]
    for name in names:
        setup = MODELS[name]
        if args.quick:  # small inputs, no warm-up: checks every code path, measures nothing
            shape = (setup.input_shape[0], 16, 16) if name == "resnet20" else None
            timed = time_model(setup, args.rounds, args.steps, 4, args.seed, warmup=False, input_shape=shape)
        else:
            timed = time_model(setup, args.rounds, args.steps, setup.batch_size, args.seed)
        result = {**meta, **timed}
        write_json(out / f"{name}.json", result)
        table = overhead_table(result)
        write_text(out / f"{name}.md", table)
        print(table)
    if args.rank_steps > 0:
        result = {**meta, **rank_experiment(args.rank_steps, args.rank_strength, args.seed,
                                            limit_test=1000 if args.quick else None)}  # fmt: skip
        write_json(out / "rank.json", result)
        table = rank_table(result)
        write_text(out / "rank.md", table)
        print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
