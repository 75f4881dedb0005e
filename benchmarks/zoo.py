"""Zoo: does ``shrinkage.compact`` remove zeroed structures exactly on real architectures?

    python benchmarks/zoo.py                                 # every family, rows not yet recorded
    python benchmarks/zoo.py --family timm --family transformers
    python benchmarks/zoo.py --family torchvision --only resnet50 --force   # re-run one row

Every torchvision classifier, popular timm models and small Hugging Face transformers
(random weights, nothing downloaded; see zoo_models.py). In each, a quarter of every
coupled channel group set and of the heads of every ``nn.MultiheadAttention`` and
registered hand-written attention (timm, BERT, GPT-2, LLaMA, ...) is zeroed as a
converged group Lasso leaves them (random non-zero BatchNorm statistics and biases),
then ``shrinkage.compact`` runs (fewest-MAC forms, no timing) and is classified:

* ``exact``: outputs equal the original's on a fresh input (relative to the output
  scale) with fewer parameters;
* ``nothing_removable``: nothing was zeroed (no removable space) and nothing removed;
* ``no_groups``: the coupled groups could not be built (nothing zeroed), compact ran;
* ``not_removed``: structures were zeroed but the result is no smaller;
* ``refused``: a ``ShrinkageError`` (its one line is recorded, grouped by cause);
* ``wrong``: the result differs (``max_abs_diff``), or compact's own check said so;
* ``raw``: any other exception (type and message);
* ``timeout`` / ``skipped`` (over ``--max-params``).

The share of removable channels is counted on the channel graph: channels of spaces that
are neither pinned nor graph inputs over all produced channels. Then Torch-Pruning runs on
the same zeroed model (its DependencyGraph, pruning every conv and linear output whose
weights are zero, as graph_vs_torch_pruning.py does): ``ok`` or ``error``, its parameters
and its output difference.

Each model runs in a forked child with a time cap, so a hung or huge model costs at most
``--timeout`` seconds. Rows are merged into results/zoo.json (atomically, under a lock)
after every model: a run can be stopped and resumed, or split by family.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import fcntl
import hashlib
import importlib
import json
import logging
import multiprocessing as mp
import pkgutil
import platform
import queue as queue_module
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zoo_models import (  # next to this script
    FAMILIES,
    Case,
    Prepared,
    cases,
    one_line,
    prepare,
)

import shrinkage
from shrinkage.compact import ByMacs, CompactOptions, max_output_difference
from shrinkage.errors import ShrinkageError
from shrinkage.graph.outputs import output_tensors
from shrinkage.io import write_json

try:  # the capture compaction itself uses (torch.export or torch.fx), where this version has it
    from shrinkage.graph.capture import capture_channel_graph as _capture
except ImportError:  # torch.fx only
    from shrinkage.graph.builder import build_channel_graph
    from shrinkage.graph.rules import default_rules

    def _capture(model: nn.Module, example: tuple[Any, ...]) -> Any:  # type: ignore[misc]
        return build_channel_graph(model, example, default_rules())


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "zoo.json"
RTOL = 1e-5
SHRINKAGE_STATUSES = (
    "exact",
    "nothing_removable",
    "no_groups",
    "not_removed",
    "refused",
    "wrong",
    "raw",
    "timeout",
    "skipped",
)
TP_STATUSES = ("ok", "error", "timeout", "skipped")


# -- one model (in the child) ---------------------------------------------------------


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def removable_share(model: nn.Module, example: tuple[Any, ...]) -> dict[str, Any]:
    """Channels of the spaces compaction may shrink over all channels some module produces."""
    try:
        graph = _capture(copy.deepcopy(model), example)
    except Exception as exc:  # noqa: BLE001  the same capture compaction uses: its failure is recorded there
        return {"error": one_line(exc)}
    spaces = [graph.table.get(r) for r in graph.table.roots()]
    produced = [s for s in spaces if s.producers and not s.is_input]
    total = sum(s.size for s in produced)
    removable = sum(s.size for s in produced if not s.pinned)
    return {
        "removable": removable,
        "total": total,
        "share": removable / total if total else 0.0,
    }


def scale_of(model: nn.Module, inputs: tuple[Any, ...]) -> float:
    """Largest output magnitude (random BatchNorm statistics make logits of any size)."""
    with torch.no_grad():
        out = model(*inputs)
    leaves = [t for t in output_tensors(out) if t.is_floating_point() and t.numel()]
    return max([float(t.abs().max()) for t in leaves] + [1.0])


class _CaptureNote(logging.Handler):
    """Keeps which capture compact() says it used (its log line names it, where it has one)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.capture: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "captured with" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) > 1:
            self.capture = str(record.args[1])


def run_shrinkage(case: Case, model: nn.Module, example: tuple[Any, ...], prepared: Prepared) -> dict[str, Any]:
    result = _compact_and_classify(case, model, example, prepared)
    if prepared.error is not None and result["status"] == "nothing_removable":
        result["status"] = "no_groups"
    return result


def _compact_and_classify(case: Case, model: nn.Module, example: tuple[Any, ...], prepared: Prepared) -> dict[str, Any]:
    zeroed = prepared.zeroed_channels + prepared.zeroed_heads
    before = params_of(model)
    note = _CaptureNote()
    logger = logging.getLogger("shrinkage.compact.api")
    logger.addHandler(note)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        small = shrinkage.compact(model, example, CompactOptions(choose_by=ByMacs()))
    except ShrinkageError as exc:
        seconds = time.perf_counter() - start
        message = one_line(exc)
        status = "wrong" if "differs from the original" in message else "refused"
        return {"status": status, "seconds": seconds, "message": message}
    except Exception as exc:  # noqa: BLE001  a bug to fix: recorded as is, type and first line
        return {
            "status": "raw",
            "seconds": time.perf_counter() - start,
            "message": one_line(exc),
        }
    seconds = time.perf_counter() - start
    fresh = case.inputs(torch.Generator().manual_seed(1))
    diff = max_output_difference(model, small, fresh)
    after = params_of(small)
    if not diff <= RTOL * scale_of(model, fresh):
        status = "wrong"
    elif after < before:
        status = "exact"
    else:
        status = "not_removed" if zeroed else "nothing_removable"
    return {
        "status": status,
        "seconds": seconds,
        "params": after,
        "max_abs_diff": diff,
        "capture": note.capture,
    }


def torch_pruning_compact(model: nn.Module, example: tuple[Any, ...]) -> nn.Module:
    """Torch-Pruning on the zeroed model: prune every conv/linear output whose weights are
    zero through its dependency graph (a group it refuses is left alone)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example[0] if len(example) == 1 else example)
    for layer in [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]:
        zero = (layer.weight.detach().flatten(1).abs().amax(1) == 0).nonzero().flatten().tolist()
        if zero and len(zero) < layer.weight.shape[0]:
            prune = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
            group = graph.get_pruning_group(layer, prune, idxs=zero)
            if graph.check_pruning_group(group):
                group.prune()
    return model


def run_torch_pruning(case: Case, model: nn.Module, example: tuple[Any, ...]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        theirs = torch_pruning_compact(model, example)
    except Exception as exc:  # noqa: BLE001  a peer's failure on a model: reported, not hidden
        return {
            "status": "error",
            "seconds": time.perf_counter() - start,
            "message": one_line(exc),
        }
    seconds = time.perf_counter() - start
    fresh = case.inputs(torch.Generator().manual_seed(1))
    try:
        diff = max_output_difference(model, theirs, fresh)
    except Exception as exc:  # noqa: BLE001  pruned into a model that no longer runs
        return {
            "status": "error",
            "seconds": seconds,
            "message": "after pruning: " + one_line(exc),
        }
    after = params_of(theirs)
    exact = diff <= RTOL * scale_of(model, fresh) and after < params_of(model)
    return {
        "status": "ok",
        "seconds": seconds,
        "params": after,
        "max_abs_diff": diff,
        "exact": exact,
    }


def _child(case: Case, fraction: float, max_params: int, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    try:
        with torch.device("meta"):  # the size before building: no memory, no initialization
            params: int | None = params_of(case.make())
    except Exception:  # noqa: BLE001  some builders insist on real tensors; the cap then does not apply
        params = None
    queue.put(("params", params))
    if max_params and params is not None and params > max_params:
        queue.put(
            (
                "shrinkage",
                {
                    "status": "skipped",
                    "message": f"{params:,} parameters > --max-params",
                },
            )
        )
        queue.put(("torch_pruning", {"status": "skipped"}))
        return
    try:
        prepared = prepare(case, fraction)
    except Exception as exc:  # noqa: BLE001  not compaction's failure: the model did not build or run
        queue.put(
            (
                "shrinkage",
                {
                    "status": "skipped",
                    "message": "the model did not build: " + one_line(exc),
                },
            )
        )
        queue.put(("torch_pruning", {"status": "skipped"}))
        return
    model, example = prepared.model, prepared.example
    if params is None:
        queue.put(("params", params_of(model)))
    queue.put(("zeroed", {"channels": prepared.zeroed_channels, "heads": prepared.zeroed_heads,
                          "groups_by": prepared.groups_by, "error": prepared.error}))  # fmt: skip
    queue.put(("channels", removable_share(model, example)))
    queue.put(("shrinkage", run_shrinkage(case, model, example, prepared)))
    queue.put(("torch_pruning", run_torch_pruning(case, model, example)))


def measure(case: Case, fraction: float, max_params: int, threads: int, timeout: float) -> dict[str, Any]:
    """One row: the case run in a forked child, whatever it reported before ``timeout``."""
    ctx = mp.get_context("fork")  # the child inherits the imports; a spawned one would redo them per model
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(case, fraction, max_params, threads, queue), daemon=True)
    start = time.perf_counter()
    child.start()
    row: dict[str, Any] = {
        "family": case.family,
        "name": case.name,
        "input": list(case.input_shape),
    }
    while "torch_pruning" not in row:
        left = timeout - (time.perf_counter() - start)
        try:
            key, value = queue.get(timeout=max(left, 0.1))
        except queue_module.Empty:  # the child died or ran out of time
            if child.is_alive() and left > 0:
                continue
            break
        row[key] = value
    child.join(1.0)
    if child.is_alive():
        child.kill()
        child.join()
    timed_out = time.perf_counter() - start >= timeout
    missing = (
        {"status": "timeout", "message": f"timed out after {timeout:.0f} s"}
        if timed_out
        else {
            "status": "raw",
            "message": f"the process died (exit code {child.exitcode}; out of memory?)",
        }
    )
    for part in ("shrinkage", "torch_pruning"):
        row.setdefault(part, dict(missing))
    row["seconds"] = time.perf_counter() - start
    row["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return row


# -- results file ---------------------------------------------------------------------


def refusal_cause(message: str) -> str:
    """A refusal's message without the node, module and model names and the numbers it was
    raised with, so that models failing for the same reason fall into one group. Where
    both captures were tried, the other capture's reason follows in parentheses."""
    first, _, other = message.partition(" (and with the other capture: ")
    cause = _cause(first)
    return f"{cause} (other capture: {_cause(other.rstrip(')'))})" if other else cause


def _cause(message: str) -> str:
    cause = message.split(";")[0].split(". ")[0]  # the first sentence: torch.fx adds a paragraph of advice
    cause = re.sub(r" at graph node '[^']*'", "", cause)
    cause = re.sub(r"module '[^']*' \(", "module (", cause)
    cause = re.sub(r"cannot trace \w+ with", "cannot trace with", cause)
    cause = re.sub(
        r"compacted \w+ differs from the original by \S+", "compacted model differs from the original", cause
    )
    cause = re.sub(r"\b[a-z_]+_\d+\b", "<node>", cause)  # fx node names such as add_3
    return cause


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        if mine:
            ours = {s: sum(r["shrinkage"]["status"] == s for r in mine) for s in SHRINKAGE_STATUSES}
            theirs = {s: sum(r["torch_pruning"]["status"] == s for r in mine) for s in TP_STATUSES}
            theirs["exact"] = sum(bool(r["torch_pruning"].get("exact")) for r in mine)
            out[family] = {
                "models": len(mine),
                "shrinkage": ours,
                "torch_pruning": theirs,
            }
    return out


def causes(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Refusal and failure causes of shrinkage, each with the models it stopped."""
    grouped: dict[str, list[str]] = {}
    for r in rows:
        s = r["shrinkage"]
        message = s.get("message") or (r.get("zeroed") or {}).get("error")
        if s["status"] in ("refused", "raw", "wrong", "timeout", "no_groups") and message:
            key = f"{s['status']}: {refusal_cause(message)}"
            grouped.setdefault(key, []).append(f"{r['family']}/{r['name']}")
    return dict(sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def source_state() -> dict[str, Any]:
    """The commit measured, whether the library's sources differed from it, and a digest of them."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()

    # the library's sources as this process imported them: other rows may come from another state
    digest = hashlib.sha1()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_modified": bool(git("status", "--porcelain", "src")),
        "src_digest": digest.hexdigest()[:12],
    }


def versions() -> dict[str, str]:
    import timm
    import torch_pruning
    import torchvision
    import transformers

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "torch_pruning": torch_pruning.__version__}  # fmt: skip


@contextmanager
def locked(path: Path):  # type: ignore[no-untyped-def]
    """Several runs (one per family) may merge rows into one file: one writer at a time."""
    lock_path = ROOT / "runs" / "zoo" / f"{path.stem}.lock"  # beside the logs, out of the results
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_row(path: Path, row: dict[str, Any], meta: dict[str, Any]) -> None:
    with locked(path):
        rows = [r for r in load_rows(path) if (r["family"], r["name"]) != (row["family"], row["name"])] + [row]
        order = {f: i for i, f in enumerate(FAMILIES)}
        rows.sort(key=lambda r: (order[r["family"]], r["name"]))
        write_json(path, {**meta, "totals": totals(rows), "causes": causes(rows), "rows": rows})


def describe(row: dict[str, Any]) -> str:
    ours, theirs = row["shrinkage"], row["torch_pruning"]
    share = row.get("channels", {}).get("share")
    text = f"{row['family']}/{row['name']:<30} {ours['status']:<17}"
    if "params" in ours:
        text += f" {row.get('params') or 0:>11,} -> {ours['params']:>11,} diff {ours['max_abs_diff']:.1e}"
    if share is not None:
        text += f" removable {share:.0%}"
    text += f" | TP {theirs['status']}" + (f" -> {theirs['params']:,}" if "params" in theirs else "")
    text += f" | {row['seconds']:.1f}s"
    if ours.get("message"):
        text += f"\n    {ours['message'][:300]}"
    return text


def import_library() -> None:
    """Import every module of the library now: the forked children then all run the sources
    as they were when this run started, even if the files change meanwhile."""
    for info in pkgutil.walk_packages(shrinkage.__path__, "shrinkage."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the command line
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra not installed: no child will need it either
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--family",
        action="append",
        choices=FAMILIES,
        help="only this family (repeatable)",
    )
    parser.add_argument("--only", action="append", help="only the model of this name (repeatable)")
    parser.add_argument("--force", action="store_true", help="re-run models already recorded")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    parser.add_argument(
        "--max-params",
        type=float,
        default=4e8,
        help="skip larger models (0: none; default 4e8)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.25,
        help="share of each group set zeroed (default 0.25)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="results file (default results/zoo.json)",
    )
    parser.add_argument("--list", action="store_true", help="print the models and exit")
    parser.add_argument("--summarize", action="store_true", help="only recount the totals and causes of the file")
    args = parser.parse_args()
    selected = [c for f in (args.family or FAMILIES) for c in cases(f) if not args.only or c.name in args.only]
    if args.list:
        print("\n".join(f"{c.key} {'x'.join(map(str, c.input_shape))}" for c in selected))
        return 0
    if args.summarize:
        rows = load_rows(args.out)
        if rows:
            with locked(args.out):
                data = json.loads(args.out.read_text())
                write_json(args.out, {**data, "totals": totals(rows), "causes": causes(rows), "rows": rows})
        return 0
    import_library()
    done = {(r["family"], r["name"]) for r in load_rows(args.out)} if not args.force else set()
    meta = {
        "benchmark": "zoo", "command": "python benchmarks/zoo.py [--family F] [--only NAME] [--force]",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": mp.cpu_count()},
        "versions": versions(), "source": source_state(), "threads": args.threads, "zeroed_fraction": args.fraction,
        "timeout_s": args.timeout, "max_params": int(args.max_params), "rtol": RTOL,
    }  # fmt: skip
    for case in selected:
        if (case.family, case.name) in done:
            continue
        row = measure(case, args.fraction, int(args.max_params), args.threads, args.timeout)
        row["src_digest"] = meta["source"]["src_digest"]
        save_row(args.out, row, meta)
        print(describe(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
