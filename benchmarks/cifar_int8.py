"""ResNet-20 on CIFAR-10 (JPEG copy): int8 post-training quantization of trained runs.

    python benchmarks/cifar_int8.py runs/cifar/baseline-s0 runs/cifar/ssl_depth-s0 runs/cifar/lowrank50-s0 \\
        --out results/cifar10/int8.json        # idle machine: nothing else running
    python benchmarks/cifar_int8.py results/cifar10/models/baseline-s0.safetensors ...  # committed models
    python benchmarks/cifar_int8.py RUN_DIR --quick --out /tmp/int8.json   # smoke check, minutes

Each RUN_DIR is written by ``shrinkage train`` (``config.yaml``, ``checkpoint.safetensors``,
``compact.safetensors``; ``target.safetensors`` too when the config has a target block) or
by ``shrinkage compress`` (``config.yaml``, ``target.safetensors``: its model alone), or is
a ResNet-20 model file written by :func:`shrinkage.save` (a committed result: that model
alone, named by its file, ``dense`` when no parameter was removed).
From each, the dense model, its compact model (``compacted``, or ``factorized`` when the
run's compaction factorized) and the target model if any are measured in three forms:

- ``float``: the model as saved, eager;
- ``float compiled``: ``torch.compile`` with inductor freezing (:class:`shrinkage.quantization.FrozenCompiled`),
  so that the int8 speed-up is not credited with what the compiler alone gives;
- ``int8``: :func:`shrinkage.quantization.quantize_int8` (torchao PT2E, x86 quantizer, compiled to oneDNN
  int8 kernels), calibrated on 512 unaugmented training images, the same fixed ones for every model.

Per model and form: accuracy on all 10,000 test images, the share of them on which it
predicts the class its float form predicts, the size of its state dict saved
as a safetensors file, the parameter count (int8 keeps the float model's count, one byte
each) and CPU latency at batch 1 and 64. Every model of every run is timed in ONE
:func:`shrinkage.metrics.compare_latency` call (interleaved rounds, the first run's dense
float model as reference, with its identical-copy control saying whether the machine was
quiet enough). Writes the JSON (``--out``) and a markdown table beside it (``.md``).

``--quick`` measures 1,000 test images and calibrates on 64, with short timings: the
result says ``"complete": false`` and is for checking the script, not for reporting.
The data come from ``$SHRINKAGE_DATA_DIR`` (``cifar10-jpeg/cifar10-jpeg.tar.gz``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from safetensors.torch import save_file
from torch import Tensor, nn

import shrinkage
from shrinkage.config import ModelConfig, load_config
from shrinkage.data import ImageDataset, batches
from shrinkage.data.cifar_jpeg import CIFAR10_JPEG_TITLE, load_cifar10_jpeg
from shrinkage.metrics import compare_latency, count_parameters
from shrinkage.metrics.timing import load_average, thread_environment
from shrinkage.quantization import FrozenCompiled, quantize_int8
from shrinkage.train.compaction import load_compact
from shrinkage.train.pipeline import load_run
from shrinkage.train.setup import build_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "results" / "cifar10" / "int8.json"
CALIBRATION_IMAGES, QUICK_CALIBRATION_IMAGES = 512, 64
QUICK_TEST_IMAGES = 1000
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
#: divides 10,000 and the quick subset: no short last batch, so no extra compilation for it
EVAL_BATCH = 100
LATENCY_BATCHES = (1, 64)
TARGET_WEIGHTS = "target.safetensors"
FORMS = ("float", "float compiled", "int8")


@dataclass(frozen=True)
class Entry:
    """One model of one run in one form."""

    run: str
    kind: str  # dense | compacted | factorized | target
    form: str  # one of FORMS
    model: nn.Module
    state: nn.Module  # what is saved for its size: the float model, or the int8 graph
    params: int

    @property
    def name(self) -> str:
        return f"{self.run}/{self.kind} {self.form}"


def fixed_subset(dataset: ImageDataset, n: int, seed: int) -> ImageDataset:
    """``n`` images drawn once with a seeded generator (the archive is ordered by class)."""
    if n >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageDataset(dataset.images[index], dataset.labels[index], dataset.num_classes, f"{dataset.name}[{n}]")


def saved_bytes(model: nn.Module, directory: Path) -> int:
    """Size of ``model.state_dict()`` written as one safetensors file."""
    path = directory / "state.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


def saved_model(path: Path) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """A ResNet-20 written by :func:`shrinkage.save` (``results/cifar10/models/*.safetensors``),
    named by its file: ``dense`` when it has every parameter of a fresh ResNet-20, else ``target``."""
    architecture = ModelConfig("resnet20", in_channels=3, num_classes=10, image_size=32)
    model = shrinkage.load(path, build_model(architecture)).eval()  # load rebuilds the model it is given
    kind = "dense" if count_parameters(model) == count_parameters(build_model(architecture)) else "target"
    return {"file": str(path), "name": path.stem, "config": None, "limit_train": None}, {kind: model}


def float_models(run_dir: Path) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """What the run is (its directory, config name, training-set limit) and its float models:
    dense, compact (compacted or factorized), target if any. A model file stands for itself."""
    if run_dir.is_file():
        return saved_model(run_dir)
    if not (run_dir / "checkpoint.safetensors").is_file() and (run_dir / TARGET_WEIGHTS).is_file():
        # a directory written by ``shrinkage compress``: its model only (the dense one is its source run's)
        config = load_config(run_dir / "config.yaml")
        about_target = {"dir": str(run_dir), "name": run_dir.name, "config": config.name,
                        "limit_train": config.data.limit_train}  # fmt: skip
        return about_target, {"target": shrinkage.load(run_dir / TARGET_WEIGHTS, build_model(config.model)).eval()}
    run = load_run(run_dir)
    about = {"dir": str(run_dir), "name": run_dir.name, "config": run.config.name,
             "limit_train": run.config.data.limit_train}  # fmt: skip
    models: dict[str, nn.Module] = {"dense": run.model.eval()}
    compact = load_compact(run_dir, build_model(run.config.model))
    models["factorized" if compact.factorized else "compacted"] = compact.model.eval()
    if (run_dir / TARGET_WEIGHTS).is_file():
        models["target"] = shrinkage.load(run_dir / TARGET_WEIGHTS, build_model(run.config.model)).eval()
    return about, models


def entries_for(run: str, kind: str, model: nn.Module, calibration: list[Tensor]) -> list[Entry]:
    params = count_parameters(model)
    quantized = quantize_int8(model, (calibration[0],), calibration)
    assert isinstance(quantized, FrozenCompiled)
    return [
        Entry(run, kind, "float", model, model, params),
        Entry(run, kind, "float compiled", FrozenCompiled(model), model, params),
        Entry(run, kind, "int8", quantized, quantized.module, params),
    ]


def warm_up(entry: Entry, example: Tensor) -> None:
    """Compile at every batch size timed below, so no compilation lands in a timed round."""
    with torch.inference_mode():
        for size in LATENCY_BATCHES:
            entry.model(example[:size])


def predictions(model: nn.Module, test: ImageDataset) -> Tensor:
    """The predicted class of every test image, in order."""
    with torch.inference_mode():
        return torch.cat([model(images).argmax(1) for images, _ in batches(test, EVAL_BATCH, shuffle=False)])


def measure(entries: list[Entry], test: ImageDataset, work: Path) -> list[dict[str, Any]]:
    """Accuracy, agreement with the same model in float, saved size and parameters of every entry."""
    rows = []
    float_predictions: dict[tuple[str, str], Tensor] = {}
    for entry in entries:
        predicted = predictions(entry.model.eval(), test)
        float_predictions.setdefault((entry.run, entry.kind), predicted)  # the float form comes first
        agreement = (predicted == float_predictions[(entry.run, entry.kind)]).double().mean()
        warm_up(entry, test.images)
        rows.append({
            "run": entry.run, "model": entry.kind, "form": entry.form,
            "accuracy": float((predicted == test.labels).double().mean()), "test_images": len(test),
            "agreement_with_float": float(agreement),
            "size_bytes": saved_bytes(entry.state, work), "params": entry.params,
        })  # fmt: skip
        print(
            f"{entry.name}: accuracy {rows[-1]['accuracy']:.4f}, agreement with float {float(agreement):.4f}, "
            f"{rows[-1]['size_bytes']:,} bytes",
            flush=True,
        )
    return rows


def time_all(entries: list[Entry], images: Tensor, quick: bool) -> list[dict[str, Any]]:
    models = {entry.name: entry.model for entry in entries}
    timing = {"repeats": 1, "min_run_time": 0.05} if quick else {"repeats": 5, "min_run_time": 0.3}
    comparisons = compare_latency(models, lambda n: images[:n].clone(), batch_sizes=LATENCY_BATCHES, **timing)
    return [comparison.as_dict() for comparison in comparisons]


def attach_latency(rows: list[dict[str, Any]], entries: list[Entry], latency: list[dict[str, Any]]) -> None:
    for row, entry in zip(rows, entries, strict=True):
        row["latency_ms"] = {str(c["batch_size"]): c["median_ms"][entry.name] for c in latency}
        row["speedup"] = {str(c["batch_size"]): c["speedup"][entry.name] for c in latency}


def markdown(result: dict[str, Any]) -> str:
    sizes = {(r["run"], r["model"], r["form"]): r["size_bytes"] for r in result["rows"]}
    lines = [
        f"#### int8 on top: post-training quantization, ResNet-20, {result['dataset']}",
        "",
        f"Accuracy on {result['test_images']:,} test images; calibration on {result['calibration']['images']} "
        f"unaugmented training images; {result['quantization']}.",
        f"Latency: median per call, {result['threads']} threads, every model in one interleaved run; speed-up "
        f"against `{result['reference']}`.",
        "",
        "| run | model | form | accuracy | same class as float | size (KiB) | vs dense float | params "
        "| ms @1 | x @1 | ms @64 | x @64 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first = result["rows"][0]
    reference_size = sizes[(first["run"], first["model"], first["form"])]
    for r in result["rows"]:
        # a compress directory has no dense model of its own: its source run's is the first run's
        dense = sizes.get((r["run"], "dense", "float"), reference_size)
        ms, up = r.get("latency_ms", {}), r.get("speedup", {})
        lines.append(
            f"| {r['run']} | {r['model']} | {r['form']} | {r['accuracy']:.2%} | {r['agreement_with_float']:.2%} | "
            f"{r['size_bytes'] / 1024:.1f} | "
            f"{dense / r['size_bytes']:.2f}x | {r['params']:,} | {_num(ms.get('1'))} | {_num(up.get('1'))} | "
            f"{_num(ms.get('64'))} | {_num(up.get('64'))} |"
        )
    lines.append("")
    for c in result["latency"]:
        verdict = "reliable" if c["reliable"] else "UNRELIABLE"
        lines.append(f"- batch {c['batch_size']}: {verdict}: {c['reason']}")
    for run in result["runs"]:
        if run["limit_train"] is not None:
            lines.append(f"- {run['name']}: trained on {run['limit_train']:,} training images only (data.limit_train)")
    if not result["complete"]:
        lines += ["", "**Incomplete** (`--quick` smoke check): not for reporting."]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="run directories written by shrinkage train or compress, or ResNet-20 model files "
                        "written by shrinkage.save (results/cifar10/models/*.safetensors)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON to write (the table goes beside it)")
    parser.add_argument("--quick", action="store_true", help="small subsets and short timings: a smoke check")
    args = parser.parse_args(argv)
    # every compiled float model of one class shares torch._dynamo's recompile budget for its forward
    # (8 by default: three runs of ResNet-20 exceed it), and past it dynamo runs eager without a word,
    # which would time an eager model as a compiled one; raise the budget and make any overrun fail
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    command = "python benchmarks/cifar_int8.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    n_calibration = QUICK_CALIBRATION_IMAGES if args.quick else CALIBRATION_IMAGES
    train = fixed_subset(load_cifar10_jpeg("train"), n_calibration, CALIBRATION_SEED)
    calibration = list(train.images.split(CALIBRATION_BATCH))
    test = load_cifar10_jpeg("test")
    if args.quick:
        test = fixed_subset(test, QUICK_TEST_IMAGES, CALIBRATION_SEED)
    load = load_average()

    entries: list[Entry] = []
    runs = []
    for run_dir in args.runs:
        about, models = float_models(run_dir)
        runs.append(about)
        for kind, model in models.items():
            print(f"{about['name']}/{kind}: quantizing", flush=True)
            entries += entries_for(about["name"], kind, model, calibration)
    with tempfile.TemporaryDirectory() as work:
        rows = measure(entries, test, Path(work))
    print("timing every model side by side", flush=True)
    latency = time_all(entries, test.images, args.quick)
    attach_latency(rows, entries, latency)

    import torchao

    result = {
        "dataset": CIFAR10_JPEG_TITLE, "model": "resnet20", "command": command, "complete": not args.quick,
        "quantization": "torchao PT2E, X86InductorQuantizer default config (static: activations uint8 per "
                        "tensor, weights int8 per output channel, BatchNorm folded), torch.compile with inductor "
                        "freezing (oneDNN int8 kernels)",
        "calibration": {"images": n_calibration, "split": "train", "augmentation": "none",
                        "selection": f"torch.randperm seed {CALIBRATION_SEED}", "batch_size": CALIBRATION_BATCH},
        "test_images": len(test), "size": "state_dict saved as one safetensors file, bytes",
        "reference": entries[0].name, "threads": torch.get_num_threads(), "load_average_at_start": load,
        "environment": thread_environment(), "torch": torch.__version__, "torchao": torchao.__version__,
        "runs": runs, "rows": rows, "latency": latency,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
