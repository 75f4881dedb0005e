"""Aggregate results/budget/*.json (one file per dataset, model and seed) over seeds.

    python benchmarks/budget_report.py     # writes results/budget/summary.json and one chart per dataset/model

Every figure is a mean ± sample standard deviation over the seeds found; a drop is the
per-seed difference to that seed's unregularized baseline (same total epochs), averaged.
``readme_table.py`` renders the README section from the same aggregation.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "budget"
METHOD_ORDER = (
    "baseline", "plain+svd", "plain+svd@nuclear-ranks", "nuclear", "nuclear+sgl", "plain+prune", "ssl", "ssl+focus",
    "ssl@conv", "ssl+focus@conv", "ssl-long@conv", "ssl+focus-long@conv", "ssl+focus-long-kd@conv",
    "plain+svd@params", "plain+prune@params", "nuclear@params",
    "plain+svd@nuclear-ranks@params", "nuclear+sgl@params", "plain+svd@params-long", "plain+prune@params-long",
    "nuclear@params-long", "plain+svd@nuclear-ranks@params-long", "nuclear+sgl@params-long",
)  # fmt: skip
LABELS = {
    "baseline": "baseline (plain, E+F epochs)",
    "plain+svd": "plain + SVD (ranks under the budget)",
    "plain+svd@nuclear-ranks": "plain + SVD at the nuclear run's ranks",
    "nuclear": "compression-aware: nuclear norm",
    "nuclear+sgl": "compression-aware: nuclear + sparse group Lasso",
    "plain+prune": "plain + pruning (coupled channels)",
    "ssl": "SSL, coupled group Lasso, strength by the budget controller",
    "ssl+focus": "SSL, group Lasso on the weakest groups only (focus), strength by the budget controller",
    "ssl@conv": "SSL, coupled group Lasso, controller to a budget of the **conv** MACs",
    "ssl+focus@conv": "SSL, focus, controller to a budget of the **conv** MACs",
    "ssl-long@conv": "SSL, coupled group Lasso, controller to a budget of the **conv** MACs, long recovery",
    "ssl+focus-long@conv": "SSL, focus, controller to a budget of the **conv** MACs, long recovery",
    "ssl+focus-long-kd@conv": "SSL, focus, controller to a budget of the **conv** MACs, long recovery distilled "
                              "from the baseline",
    "plain+svd@params": "plain + SVD to a **parameter** budget",
    "plain+prune@params": "plain + pruning to a **parameter** budget",
    "nuclear@params": "compression-aware: nuclear norm, factorized to a **parameter** budget",
    "plain+svd@nuclear-ranks@params": "plain + SVD at the nuclear run's ranks (parameter budget)",
    "nuclear+sgl@params": "compression-aware: nuclear + sparse group Lasso, factorized to a **parameter** budget",
    "plain+svd@params-long": "plain + SVD to a **parameter** budget, long recovery",
    "plain+prune@params-long": "plain + pruning to a **parameter** budget, long recovery",
    "nuclear@params-long": "compression-aware: nuclear norm, factorized to a **parameter** budget, long recovery",
    "plain+svd@nuclear-ranks@params-long": "plain + SVD at the nuclear run's ranks (parameter budget), long recovery",
    "nuclear+sgl@params-long": "compression-aware: nuclear + sparse group Lasso, factorized to a **parameter** budget, "
                               "long recovery",
}
#: what rows whose ranks were chosen by the summed lost energy (``RankCriterion.LOST``, the
#: default of ``factorize(budget=...)`` before the product of kept shares) add to their label
LOST_CRITERION = "lost"
LOST_LABEL = " [ranks by the summed lost energy]"
#: the setup the parameter target below is set for (LeNet on MNIST, as in the paper)
TARGET_SETUP = "mnist/lenet"
#: the compression-aware paper's target on LeNet: at least this much fewer parameters ...
PARAMS_TARGET = 0.05
#: ... at most this many points above the unregularized baseline's error
DROP_TARGET = 0.3


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}  # fmt: skip


def load(results: Path = RESULTS) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*-seed*.json"))]


def aggregate(files: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"dataset/model": {"meta": ..., "rows": [per (method, budget) stats]}}``."""
    out: dict[str, Any] = {}
    by_setup: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in files:
        by_setup[f"{f['dataset']}/{f['model']}"].append(f)
    for setup, runs in sorted(by_setup.items()):
        baseline = {r["seed"]: r["accuracy"] for f in runs for r in f["rows"] if r["method"] == "baseline"}
        groups: dict[tuple[str, float | None, str | None], list[dict[str, Any]]] = defaultdict(list)
        for f in runs:
            for r in f["rows"]:  # rows recorded before rows carried dates have their file's
                groups[(r["method"], r["budget_macs"], r.get("rank_criterion"))].append({"date": f.get("date"), **r})
        rows = []
        for (method, budget, criterion), rs in groups.items():
            label = LABELS.get(method, method) + (LOST_LABEL if criterion == LOST_CRITERION else "")
            rows.append({
                "method": method, "label": label, "budget_macs": budget, "rank_criterion": criterion,
                "budget_params": rs[0].get("budget_params"), "seeds": sorted(r["seed"] for r in rs),
                "error": _stats([1 - r["accuracy"] for r in rs]),
                "error_selected": _stats([1 - r["accuracy_selected"] for r in rs]),
                "drop": _stats([baseline[r["seed"]] - r["accuracy"] for r in rs if r["seed"] in baseline]),
                "macs": _stats([r["macs"] for r in rs]), "params": _stats([r["params"] for r in rs]),
                "conv_macs": _stats([r["conv_macs"] for r in rs]),
                "epochs": rs[0]["epochs"], "finetune_epochs": rs[0]["finetune_epochs"],
                "dates": sorted(r["date"] for r in rs if r["date"]),
            })  # fmt: skip
        # the baseline, then MAC budgets from the largest, then parameter budgets
        rows.sort(key=lambda r: (0 if r["method"] == "baseline" else 2 if r.get("budget_params") else 1,
                                 -(r["budget_macs"] or r.get("budget_params") or 0),
                                 METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99,
                                 r["rank_criterion"] != LOST_CRITERION))  # fmt: skip
        first = runs[0]
        meta = {k: first.get(k) for k in ("machine", "torch", "device", "epochs", "finetune_epochs", "limit_train")}
        meta["commands"] = sorted({f["command"] for f in runs} | {r["command"] for f in runs for r in f.get("reruns", [])})
        meta["dates"] = sorted(f["date"] for f in runs if f.get("date"))
        out[setup] = {"meta": meta, "rows": rows}
    return out


def chart(setup: str, data: dict[str, Any], path: Path) -> None:
    """Test error against the MAC fraction, every method and the baseline, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [(m, c) for m in METHOD_ORDER for c in dict.fromkeys(r["rank_criterion"] for r in data["rows"])]
    for method, criterion in series:
        rows = [r for r in data["rows"] if r["method"] == method and r["rank_criterion"] == criterion]
        if not rows:
            continue
        if method == "baseline":
            e = 100 * rows[0]["error"]["mean"]
            ax.axhline(e, color="black", lw=1, ls="--", label=f"baseline ({e:.2f}%)")
            continue
        xs = [100 * r["macs"]["mean"] for r in rows]
        ys = [100 * r["error"]["mean"] for r in rows]
        es = [100 * r["error"]["std"] for r in rows]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=rows[0]["label"])
    ax.set_xlabel("MACs, % of the dense model")
    ax.set_ylabel("test error after fine-tuning, %")
    ax.set_title(f"{setup}: error vs MACs (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(s: dict[str, float], scale: float = 100, digits: int = 2) -> str:
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


#: runs recorded before this date trained their SSL rows with coupled groups holding
#: shifts and a fixed 60-step controller horizon (that code differs from today's)
REGULARIZER_CHANGED = "2026-12-01T10:00:00+00:00"
#: the rows that change affects
SSL_ROWS = ("ssl",)


def _recorded_before(rows: list[dict[str, Any]], methods: tuple[str, ...], date: str) -> bool:
    return any(d < date for r in rows if r["method"] in methods for d in r.get("dates", []))


def table(summary: dict[str, Any]) -> str:
    """The README section: one table per dataset/model, and the chart links."""
    if not summary:
        return "_No budget results recorded yet: run `python benchmarks/budget_results.py`._\n"
    lines = ["### Budgets: compression-aware training vs compressing afterwards", ""]
    for setup, data in summary.items():
        meta = data["meta"]
        n = max(r["error"]["n"] for r in data["rows"])
        lines += [
            f"**{setup}** ({n} seeds; E = {meta['epochs']} epochs of training, then F = {meta['finetune_epochs']} of "
            f"fine-tuning after selection; the baseline trains E + F; full test set; "
            f"torch {meta['torch']} on {meta['machine'].get('gpu') or 'the CPU'})",
            "",
            "| method | budget | MACs | params | conv MACs | error after selection | error after fine-tuning | drop vs baseline (points) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["rows"]:
            budget = ("–" if r["budget_macs"] is None else f"{100 * r['budget_macs']:.0f}%")
            if r.get("budget_params"):
                budget = f"params {100 * r['budget_params']:.0f}%"
            elif r["method"].endswith("@conv"):
                budget = f"conv {budget}"
            label = r["label"]
            if r["finetune_epochs"] and (r["epochs"], r["finetune_epochs"]) != (meta["epochs"], meta["finetune_epochs"]):
                label += f" ({r['epochs']} + {r['finetune_epochs']} epochs)"
            lines.append(f"| {label} | {budget} | {_pm(r['macs'])}% | {_pm(r['params'])}% | {_pm(r['conv_macs'])}% "
                         f"| {_pm(r['error_selected'])}% | {_pm(r['error'])}% | {_pm(r['drop'])} |")  # fmt: skip
        lines += ["", *_verdicts(data["rows"], setup == TARGET_SETUP), "", "Produced by: " + "; ".join(f"`{c}`" for c in meta["commands"])]
        if _recorded_before(data["rows"], SSL_ROWS, REGULARIZER_CHANGED):
            changed = REGULARIZER_CHANGED[:16].replace("T", " ")
            lines += ["", f"Recorded before {changed} UTC: the SSL rows (coupled group Lasso, budget "
                      "controller) ran with coupled groups that held biases and BatchNorm shifts and the controller's "
                      "fixed 60-step horizon (see 'Training to a budget' above); they are not rerun yet. The other "
                      "rows do not depend on either."]
        slug = setup.replace("/", "-")
        lines += ["", f"![{setup}: error vs MACs](results/budget/{slug}.png)", ""]
    return "\n".join(lines)


def _verdicts(rows: list[dict[str, Any]], with_target: bool = False) -> list[str]:
    """Does training-time compression beat compressing afterwards (plain training + SVD +
    fine-tuning) by more than the spread across seeds? Computed, not written by hand."""
    out = []
    groups = [(f"{100 * b:.0f}% MACs", [r for r in rows if r["budget_macs"] == b], "")
              for b in sorted({r["budget_macs"] for r in rows if r["budget_macs"] is not None}, reverse=True)]
    for suffix in ("@params", "@params-long"):  # (the labels of the long rows say so)
        groups += [(f"{100 * b:.0f}% of the parameters", [r for r in rows if r.get("budget_params") == b], suffix)
                   for b in sorted({r["budget_params"] for r in rows if r.get("budget_params")}, reverse=True)]  # fmt: skip
    # factorized rows are compared with rows whose ranks the same criterion chose; rows
    # without ranks (SSL, a compaction that met the budget alone) with the default
    # criterion's rows where there are any, else with the summed lost energy's
    criteria = list(dict.fromkeys(r["rank_criterion"] for r in rows if r["rank_criterion"] is not None))
    groups = [(name, {r["method"]: r for r in group if r["rank_criterion"] in (None, criterion)}, suffix)
              for name, group, suffix in groups
              for criterion in sorted(criteria, key=lambda c: c == LOST_CRITERION) or [None]]
    seen: set[tuple[str, str, str]] = set()
    for name, at, suffix in groups:
        comparisons = [(m + suffix, "plain+svd" + suffix, "plain + SVD + fine-tuning")
                       for m in ("nuclear", "nuclear+sgl", "ssl", "ssl+focus")]  # fmt: skip
        # the same ranks on the plain model: is it the training or the ranks it chose?
        comparisons.append(("nuclear" + suffix, "plain+svd@nuclear-ranks" + suffix,
                            "plain + SVD at the same ranks + fine-tuning"))  # fmt: skip
        for method, against, against_label in comparisons:
            r, reference = at.get(method), at.get(against)
            if r is None or reference is None or (name, r["label"], against) in seen:
                continue
            seen.add((name, r["label"], against))
            diff = 100 * (reference["error"]["mean"] - r["error"]["mean"])
            spread = 100 * max(reference["error"]["std"], r["error"]["std"])
            seeds = min(reference["error"]["n"], r["error"]["n"])
            if seeds < 2:  # one seed has no spread: say so rather than compare with zero
                verdict = f"{'better' if diff > 0 else 'worse'} on one seed (no spread to compare with)"
            else:
                verdict = ("better by more than the spread across seeds" if diff > spread
                           else "worse by more than the spread across seeds" if -diff > spread
                           else "within the spread across seeds")  # fmt: skip
            against_label += LOST_LABEL if reference["rank_criterion"] == LOST_CRITERION else ""
            out.append(f"- {name}, {r['label']}: error {_pm(r['error'])}% against "
                       f"{_pm(reference['error'])}% for {against_label} ({diff:+.2f} points): {verdict}.")  # fmt: skip
    if with_target:
        out += _params_target(rows)
    for r in rows:  # how close the conv-MAC rows came to their budget, per seed at worst
        if r["method"].endswith("@conv") and r["budget_macs"]:
            off = (r["conv_macs"]["mean"] - r["budget_macs"]) / r["budget_macs"]
            out.append(f"- {LABELS[r['method']]} at {100 * r['budget_macs']:.0f}%: conv MACs "
                       f"{_pm(r['conv_macs'])}% ({100 * off:+.1f}% of the target), error {_pm(r['error'])}%.")  # fmt: skip
    return out


def _params_target(rows: list[dict[str, Any]]) -> list[str]:
    """Which rows reach the compression-aware paper's LeNet target (``PARAMS_TARGET`` of the
    parameters or fewer, mean error at most ``DROP_TARGET`` points above the baseline's)."""
    small = [r for r in rows if r["method"] != "baseline" and r["params"]["mean"] <= PARAMS_TARGET + 1e-9]
    if not small:
        return []
    head = (f"- Target: at least {100 * (1 - PARAMS_TARGET):.0f}% fewer parameters and at most {DROP_TARGET} points "
            "above the baseline's error: ")
    describe = lambda r: f"{r['label']} ({_pm(r['params'])}% of the parameters, drop {_pm(r['drop'])})"  # noqa: E731
    meeting = [r for r in small if 100 * r["drop"]["mean"] <= DROP_TARGET + 1e-9]
    if meeting:
        return [head + "met by " + "; ".join(describe(r) for r in meeting) + "."]
    closest = min(small, key=lambda r: r["drop"]["mean"])
    return [head + "not met; closest: " + describe(closest) + "."]


def main() -> None:
    summary = aggregate(load())
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for setup, data in summary.items():
        chart(setup, data, RESULTS / f"{setup.replace('/', '-')}.png")
    print(table(summary))


if __name__ == "__main__":
    main()
