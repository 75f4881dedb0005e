"""Per-layer structure of a (sparse or low-rank) model and of its compacted version.

Vocabulary, for a weight of shape ``(N, C, kh, kw)`` (a Linear weight is ``(N, C)``):

* filter ``n``: the slice ``W[n]`` that produces output unit ``n``;
* channel ``c``: the slice ``W[:, c]`` that reads input unit ``c``;
* shape column ``(c, i, j)``: ``W[:, c, i, j]``, one column of the im2col matrix
  ``N x (C*kh*kw)`` (the "filter shape" groups of structured-sparsity learning).

For grouped convolutions ``C`` is the per-group input width stored in the weight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError, UnsupportedModuleError
from shrinkage.metrics import _format as fmt
from shrinkage.metrics._common import require_module
from shrinkage.metrics.size import count_parameters

log = logging.getLogger(__name__)

_LAYER_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerRow:
    """One Conv2d/Linear layer of the dense model and what replaced it.

    ``shape_columns``/``zero_shape_columns`` are ``None`` for Linear layers (whose
    columns are exactly their channels). ``compact*`` fields are ``None`` when no
    compact model was given; ``compact`` is ``"removed"`` when the compact model has
    no module of that name.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    filters: int
    zero_filters: int
    channels: int
    zero_channels: int
    shape_columns: int | None
    zero_shape_columns: int | None
    sparsity: float
    energy: float
    rank: int
    full_rank: int
    compact: str | None = None
    compact_shapes: tuple[tuple[int, ...], ...] | None = None
    compact_params: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists when serialized)."""
        return asdict(self)


def _check_weight(weight: Tensor, what: str) -> Tensor:
    if not isinstance(weight, Tensor):
        raise UnsupportedModuleError(f"{what}: expected a weight tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise UnsupportedModuleError(
            f"{what}: weight of shape {tuple(weight.shape)} is not a Linear or conv weight (needs >= 2 dims)"
        )
    return weight.detach()


def group_sparsity(weight: Tensor, *, tol: float = 0.0) -> dict[str, Any]:
    """Count all-zero filters, channels and shape columns of a layer weight.

    An entry counts as zero when ``|w| <= tol`` (exact zeros by default: group-Lasso
    proximal steps produce exact zeros, so a tolerance would only hide dense
    weights). Returns a dict with ``filters``, ``zero_filters``, ``channels``,
    ``zero_channels``, ``shape_columns``, ``zero_shape_columns`` (both ``None`` for a
    2-D weight), ``elements``, ``zero_elements`` and ``sparsity`` (fraction of zero
    entries).
    """
    w = _check_weight(weight, "group_sparsity")
    is_zero = w.abs() <= tol
    n_out, n_in = w.shape[0], w.shape[1]
    per_filter = is_zero.reshape(n_out, -1).all(dim=1)
    per_channel = is_zero.transpose(0, 1).reshape(n_in, -1).all(dim=1)
    if w.dim() > 2:
        per_column = is_zero.reshape(n_out, -1).all(dim=0)
        shape_columns, zero_columns = per_column.numel(), int(per_column.sum())
    else:
        shape_columns, zero_columns = None, None
    elements = w.numel()
    zero_elements = int(is_zero.sum())
    return {
        "filters": n_out,
        "zero_filters": int(per_filter.sum()),
        "channels": n_in,
        "zero_channels": int(per_channel.sum()),
        "shape_columns": shape_columns,
        "zero_shape_columns": zero_columns,
        "elements": elements,
        "zero_elements": zero_elements,
        "sparsity": zero_elements / elements if elements else 0.0,
    }


def _check_energy(energy: float) -> None:
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"energy must be in (0, 1], got {energy!r}")


def singular_values(weight: Tensor) -> Tensor:
    """Singular values (float64, descending) of the weight as ``N x (C*kh*kw)``."""
    w = _check_weight(weight, "singular_values")
    return torch.linalg.svdvals(w.reshape(w.shape[0], -1).to("cpu", torch.float64))


def rank_at_energy(weight: Tensor, energy: float) -> int:
    """Smallest ``r`` whose top-``r`` squared singular values hold ``>= energy`` of the total.

    Singular values below the usual numerical-rank tolerance
    (``max(shape) * eps(dtype) * s_max``) are treated as zero first; otherwise
    round-off in a float32 weight would make ``energy=1.0`` always return full rank.
    Returns 0 for an all-zero weight.
    """
    _check_energy(energy)
    s = singular_values(weight)
    if s.numel() == 0 or s[0] == 0:
        return 0
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    tol = max(weight.shape[0], weight[0].numel()) * torch.finfo(dtype).eps * s[0]
    kept = s[s > tol] ** 2
    cumulative = torch.cumsum(kept, 0) / kept.sum()
    # The small slack absorbs float64 round-off in the cumulative sum at energy 1.0.
    rank = int((cumulative < energy - 1e-12).sum()) + 1
    return min(rank, kept.numel())


def _weight_shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(type name, shape) of the weight of every parameter-holding module inside ``module``.

    Conv2d/Linear and custom layers (e.g. an im2col GEMM replacement) alike contribute
    their ``weight``; a module without one contributes each of its own parameters.
    Biases are left out: they do not change what a replacement's shape says.
    """
    shapes = []
    for sub in module.modules():
        own = dict(sub.named_parameters(recurse=False))
        if not own:
            continue
        chosen = [own["weight"]] if "weight" in own else list(own.values())
        shapes += [(type(sub).__name__, tuple(p.shape)) for p in chosen]
    return shapes


def _describe_replacement(module: nn.Module) -> tuple[str, tuple[tuple[int, ...], ...], int]:
    """Describe ``module`` by the weight shapes inside it and its parameter count."""
    found = _weight_shapes(module)
    params = count_parameters(module)
    if not found:
        return f"{type(module).__name__} (no parameters)", (), params
    text = " + ".join(f"{kind} {'x'.join(map(str, shape)) or 'scalar'}" for kind, shape in found)
    if any(sub is not module for sub in module.modules()) or len(found) > 1:
        # A container (e.g. a factorized pair): name it so the row shows what wraps the layers.
        text = f"{type(module).__name__}: {text}"
    return text, tuple(shape for _, shape in found), params


def layer_table(dense: nn.Module, compact: nn.Module | None = None, energy: float = 0.9) -> list[LayerRow]:
    """One :class:`LayerRow` per Conv2d/Linear of ``dense``, in ``named_modules`` order.

    When ``compact`` is given, each row also describes the module found under the
    same qualified name in ``compact`` (a resized layer, a factorized container,
    anything), or ``"removed"`` when that name no longer exists.
    """
    require_module(dense, "layer_table: dense")
    if compact is not None:
        require_module(compact, "layer_table: compact")
    _check_energy(energy)
    compact_modules = dict(compact.named_modules()) if compact is not None else {}
    rows: list[LayerRow] = []
    for name, module in dense.named_modules():
        if not isinstance(module, _LAYER_TYPES):
            continue
        weight = module.weight.detach()
        stats = group_sparsity(weight)
        description = shapes = params = None
        if compact is not None:
            replacement = compact_modules.get(name)
            if replacement is None:
                description, shapes, params = "removed", (), 0
            else:
                description, shapes, params = _describe_replacement(replacement)
        rows.append(
            LayerRow(
                name=name,
                kind=type(module).__name__,
                shape=tuple(weight.shape),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                filters=stats["filters"],
                zero_filters=stats["zero_filters"],
                channels=stats["channels"],
                zero_channels=stats["zero_channels"],
                shape_columns=stats["shape_columns"],
                zero_shape_columns=stats["zero_shape_columns"],
                sparsity=stats["sparsity"],
                energy=energy,
                rank=rank_at_energy(weight, energy),
                full_rank=min(weight.shape[0], weight[0].numel()),
                compact=description,
                compact_shapes=shapes,
                compact_params=params,
            )
        )
    log.debug("layer_table: %d layers", len(rows))
    return rows


def _count_cell(zero: Any, total: Any) -> str:
    return f"{zero}/{total}" if fmt.is_number(zero) and fmt.is_number(total) else fmt.MISSING


def layer_table_markdown(rows: Iterable[LayerRow | Mapping[str, Any]]) -> str:
    """Render layer rows (dataclasses or their dicts, e.g. read back from JSON) as markdown."""
    dicts = [row.as_dict() if isinstance(row, LayerRow) else dict(row) for row in rows]
    with_compact = any(d.get("compact") is not None for d in dicts)
    energy = next((d["energy"] for d in dicts if fmt.is_number(d.get("energy"))), None)
    rank_title = f"rank@{energy:g}" if energy is not None else "rank"
    header = ["layer", "kind", "shape", "params", "zero filters", "zero channels",
              "zero shape cols", "sparsity", f"{rank_title} / full"]
    if with_compact:
        header += ["compact", "compact params"]
    table_rows = []
    for d in dicts:
        shape = d.get("shape")
        cells = [
            f"`{d.get('name') or '(root)'}`",
            str(d.get("kind") or fmt.MISSING),
            "x".join(map(str, shape)) if shape else fmt.MISSING,
            fmt.count(d.get("params")),
            _count_cell(d.get("zero_filters"), d.get("filters")),
            _count_cell(d.get("zero_channels"), d.get("channels")),
            _count_cell(d.get("zero_shape_columns"), d.get("shape_columns")),
            fmt.percent(d.get("sparsity")),
            _count_cell(d.get("rank"), d.get("full_rank")),
        ]
        if with_compact:
            cells += [str(d.get("compact") or fmt.MISSING), fmt.count(d.get("compact_params"))]
        table_rows.append(cells)
    return fmt.table(header, table_rows)
