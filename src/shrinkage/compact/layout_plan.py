"""Check a parsed layout against the base model, then build its layers off to the side.

Loading never trusts the file: before any layer is constructed, every entry must name
a submodule of the base model (or a child that a rebuilt entry creates), be a layer
type that can stand in for the base layer there, and ask for no more than that base
layer has (:mod:`shrinkage.compact.layout_bounds`). Only then are the new layers built,
outside the base model, so that the tensors can be checked against them too; the base
model is changed (:func:`install`) once everything fits.

A subclass entry (a shrunk ``BatchNormAct2d``, see :mod:`shrinkage.compact.layout`) is
rebuilt from the base model's own layer it derives from, which must be of that very
class; its children are that layer's children, so entries inside it name places of that
layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from shrinkage.compact.layout import LayoutEntry, codec_of
from shrinkage.compact.layout_bounds import limits_of
from shrinkage.compact.layout_schema import LayoutError
from shrinkage.compact.surgery import set_submodule
from shrinkage.layers import HeadPrunedAttention, LoweredConv2d, SelectInputs

#: the most layers one base layer may be rebuilt as (a factorized attention with its four
#: projections factorized needs 13): a layout cannot multiply the model by listing more
MAX_PER_BASE_LAYER = 32


@dataclass(frozen=True)
class RebuildPlan:
    """Which entries of a checked layout are built, and the base layer each derives from."""

    entries: dict[str, LayoutEntry]
    built: tuple[str, ...]  # parents before children
    tops: tuple[str, ...]  # the built names that replace a module of the base model
    origins: dict[str, str]  # entry name -> name of the base layer it stands in for
    resized_from: dict[str, nn.Module]  # built subclass entry -> the base model's layer it copies


def base_module(root: nn.Module, name: str) -> nn.Module | None:
    """The submodule ``name`` of ``root``, or None (walks registered children only)."""
    module: nn.Module | None = root
    for part in name.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


def _nearest_base(root: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The deepest module of ``root`` along the path ``name``, and its name."""
    module, found, parts = root, "", name.split(".")
    for i, part in enumerate(parts):
        child = module._modules.get(part)
        if child is None:
            break
        module, found = child, ".".join(parts[: i + 1])
    return found, module


def _built_ancestor(name: str, built: set[str]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in built:
            return ".".join(parts[:i])
    return None


def _origin(base: nn.Module, layout: dict[str, LayoutEntry], name: str, inside: str | None,
            origins: dict[str, str]) -> tuple[str, nn.Module | None]:  # fmt: skip
    """The base layer ``name`` stands in for, and its name. Inside a rebuilt subclass layer
    (a copy of a base layer), the place of that base layer's own child; elsewhere the
    deepest base module along ``name`` (None: a subclass copy has no such child)."""
    if inside is not None and layout[inside].subclass is not None:
        origin_name = origins[inside] + name[len(inside) :]
        return origin_name, base_module(base, origin_name)
    return _nearest_base(base, name)


def _check_place(base: nn.Module, layout: dict[str, LayoutEntry], name: str, inside: str | None,
                 origin: nn.Module | None, source: str) -> None:  # fmt: skip
    """``name`` exists where the layout puts it: in the base model, as a child that its
    rebuilt parent creates, or as a child of the base layer a rebuilt subclass copies."""
    if inside is None:
        if base_module(base, name) is None:
            raise LayoutError(f"{source}: layout entry '{name}' names no submodule of the base {type(base).__name__}")
        return
    if layout[inside].subclass is not None:
        if origin is None:
            raise LayoutError(f"{source}: layout entry '{name}' names no child of the rebuilt '{inside}' "
                              f"({layout[inside].kind})")  # fmt: skip
        return
    parent, _, leaf = name.rpartition(".")
    owner = layout.get(parent)
    if owner is None:
        raise LayoutError(f"{source}: layout entry '{name}' lies inside the rebuilt '{inside}', "
                          f"but its parent '{parent}' has no entry")  # fmt: skip
    children = owner.codec.children(owner.args)
    if leaf not in children:
        raise LayoutError(f"{source}: layout entry '{name}' names no child of the rebuilt '{parent}' "
                          f"({owner.kind} with children: {', '.join(children) or 'none'})")  # fmt: skip


def _check_fit(entry: LayoutEntry, name: str, origin_name: str, origin: nn.Module, source: str) -> None:
    """The entry's type can stand in for the base layer ``origin``, within its sizes."""
    what = f"{source}: layout entry '{name}' ({entry.kind})"
    base = f"base layer '{origin_name}' ({type(origin).__name__})"
    if entry.subclass is not None:
        _check_subclass_fit(entry, what, base, origin)
    elif not isinstance(origin, entry.codec.stands_for + (entry.cls,)):
        raise LayoutError(f"{what} cannot be built in place of {base}")
    limits = limits_of(origin, derived=origin_name != name)
    for bound in entry.codec.bounds(entry.args, limits):
        if bound.broken and bound.exact:
            raise LayoutError(f"{what} has {bound.field}={bound.value}, but {base} needs {bound.limit}")
        if bound.broken:
            raise LayoutError(f"{what} has {bound.field}={bound.value}, more than the {bound.limit} "
                              f"that {base} allows")  # fmt: skip


def _check_subclass_fit(entry: LayoutEntry, what: str, base: str, origin: nn.Module) -> None:
    """A subclass layer is a copy of ``origin``: of the named class, with only its sizes changed."""
    if not entry.is_kind_of(origin):
        raise LayoutError(f"{what} can only be rebuilt from a base layer of that class, not from {base}")
    have = entry.codec.encode(origin)
    for key, value in entry.args.items():
        if key not in entry.codec.resizable and value != have.get(key):
            raise LayoutError(f"{what} has {key}={value}, but {base} has {key}={have.get(key)} "
                              f"(only {', '.join(entry.codec.resizable)} may differ)")  # fmt: skip


def plan_rebuild(base: nn.Module, layout: dict[str, LayoutEntry], source: str) -> RebuildPlan:
    """Check every entry of ``layout`` against ``base`` (nothing is built or changed) and
    say which entries differ from the base model; ``source`` names the file in errors."""
    built: list[str] = []
    origins: dict[str, str] = {}
    resized_from: dict[str, nn.Module] = {}
    per_origin: Counter[str] = Counter()
    for name in sorted(layout, key=lambda n: (n.count("."), n)):  # parents before their children
        entry = layout[name]
        inside = _built_ancestor(name, set(built))
        origin_name, origin = _origin(base, layout, name, inside, origins)
        _check_place(base, layout, name, inside, origin, source)
        assert origin is not None  # _check_place: a subclass copy has this child
        _check_fit(entry, name, origin_name, origin, source)
        origins[name] = origin_name
        if inside is None and entry.describes(origin):
            continue
        built.append(name)
        if entry.subclass is not None:
            resized_from[name] = origin
        per_origin[origin_name] += 1
        if per_origin[origin_name] > MAX_PER_BASE_LAYER:
            raise LayoutError(f"{source}: layout rebuilds base layer '{origin_name}' as more than "
                              f"{MAX_PER_BASE_LAYER} layers")  # fmt: skip
        if entry.codec.placeholders:
            for child in entry.codec.children(entry.args):
                if f"{name}.{child}" not in layout:
                    raise LayoutError(f"{source}: layout entry '{name}' lists child '{child}', "
                                      f"which has no entry '{name}.{child}'")  # fmt: skip
    tops = tuple(n for n in built if _built_ancestor(n, set(built)) is None)
    return RebuildPlan(layout, tuple(built), tops, origins, resized_from)


def _decode(name: str, entry: LayoutEntry, source: str, layer: nn.Module | None = None) -> nn.Module:
    """The layer ``entry`` describes: a resized copy of the base model's ``layer`` for a
    subclass entry, else built from its arguments."""
    try:
        module = entry.codec.decode(entry.args) if layer is None else entry.codec.resized(layer, entry.args)
    except (ValueError, TypeError, RuntimeError) as exc:  # a constructor refusing a combination of sizes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayoutError(f"{source}: layout entry '{name}' ({entry.kind}) cannot be built: {reason}") from None
    if entry.codec.placeholders:  # children keep their order; each is rebuilt from its own entry next
        for child in entry.codec.children(entry.args):
            module.add_module(child, nn.Identity())
    return module


def build(plan: RebuildPlan, source: str) -> dict[str, nn.Module]:
    """The new module for each of ``plan.tops``, built outside the base model."""
    made: dict[str, nn.Module] = {}
    for name in plan.built:
        entry = plan.entries[name]
        top = name if name in plan.tops else _built_ancestor(name, set(plan.tops))
        layer = plan.resized_from.get(name)
        if top is None or top == name:
            made[name] = _decode(name, entry, source, layer)
            continue
        inner = name[len(top) + 1 :]
        current = made[top].get_submodule(inner)  # it exists: plan_rebuild checked its parent creates it
        if entry.describes(current):
            continue  # created by its parent exactly as described (an attention's projections)
        set_submodule(made[top], inner, _decode(name, entry, source, layer))
    return made


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def install(base: nn.Module, made: dict[str, nn.Module]) -> None:
    """Put the built modules into ``base``, in the training mode and on the device of the
    modules they replace."""
    for name, new in made.items():
        old = base_module(base, name)
        assert old is not None  # plan_rebuild: every top names a module of the base
        new.train(old.training)
        device = _device_of(old)
        if device is not None:
            new.to(device)
        set_submodule(base, name, new)


#: index buffers a rebuilt layer reads positions with, and the number of positions there are
def _lowered_columns(m: nn.Module, origin: nn.Module) -> int:
    assert isinstance(m, LoweredConv2d)  # the entry of LoweredConv2d
    return m.in_channels * m.kernel_size[0] * m.kernel_size[1]


def _original_heads(m: nn.Module, origin: nn.Module) -> int:
    assert isinstance(m, HeadPrunedAttention)  # the entry of HeadPrunedAttention
    return m.original_heads


_INDEX_BUFFERS: dict[type[nn.Module], tuple[str, Callable[[nn.Module, nn.Module], int]]] = {
    SelectInputs: ("index", lambda m, origin: limits_of(origin, derived=False).inputs),
    LoweredConv2d: ("columns", _lowered_columns),
    HeadPrunedAttention: ("kept", _original_heads),
}


def index_bounds(base: nn.Module, plan: RebuildPlan, made: dict[str, nn.Module]) -> Iterator[tuple[str, int]]:
    """``(tensor name, positions)`` for every index buffer of the built modules: its values
    must be distinct and in ``range(positions)``."""
    for top, new in made.items():
        for inner, module in new.named_modules():
            spec = _INDEX_BUFFERS.get(type(module))
            if spec is None:
                continue
            name = f"{top}.{inner}" if inner else top
            buffer, positions = spec
            yield f"{name}.{buffer}", positions(module, _nearest_base(base, name)[1])


def _free_place(base: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The module of ``base`` holding tensor ``name`` directly, and the attribute; None if none does."""
    owner, _, attr = name.rpartition(".")
    module = base_module(base, owner) if owner else base
    if module is None or (module._parameters.get(attr) is None and module._buffers.get(attr) is None):
        return None
    return module, attr


def resized_tensors(base: nn.Module, made: dict[str, nn.Module], expected: dict[str, torch.Tensor],
                    shapes: dict[str, tuple[int, ...]], source: str) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """The free tensors (see :func:`~shrinkage.compact.layout.describe_tensors`) whose saved
    ``shapes`` differ from ``expected`` (the state of ``base`` with the ``made`` layers in),
    by name: each is a parameter or saved buffer of ``base`` itself (not of a rebuilt layer),
    of a module without layout codec, held under that one name, with as many dims as in
    ``base`` and none larger."""
    resized: dict[str, tuple[int, ...]] = {}
    tops = tuple(f"{top}." for top in made)
    names = {id(t): 0 for t in expected.values()}
    for t in expected.values():
        names[id(t)] += 1
    for name, shape in shapes.items():
        what = f"{source}: tensors['{name}']"
        want = expected.get(name)
        if want is None:
            raise LayoutError(f"{what} names no tensor of the model the layout rebuilds")
        if tuple(want.shape) == shape:
            continue
        have = f"has shape {tuple(shape)}, but"
        place = _free_place(base, name)
        if name.startswith(tops) or place is None:
            raise LayoutError(f"{what} {have} the rebuilt layer holding it has {tuple(want.shape)}")
        module, attr = place
        if codec_of(type(module)) is not None:
            raise LayoutError(f"{what} {have} it belongs to a {type(module).__name__}, which its layout entry sizes")
        if attr in module._non_persistent_buffers_set or names[id(want)] > 1:
            raise LayoutError(f"{what} {have} the base model shares it or does not save it")
        if len(shape) != want.dim() or any(s > b for s, b in zip(shape, want.shape, strict=True)):
            raise LayoutError(f"{what} {have} the base model's is {tuple(want.shape)} (a free tensor only shrinks)")
        resized[name] = shape
    return resized


def resize_tensors(base: nn.Module, resized: dict[str, tuple[int, ...]]) -> None:
    """Give each tensor of ``base`` named in ``resized`` that shape (its values come with the
    state dict); a parameter stays a parameter, a buffer a buffer of its kind."""
    for name, shape in resized.items():
        place = _free_place(base, name)
        assert place is not None  # checked by resized_tensors
        module, attr = place
        if module._parameters.get(attr) is not None:
            old = module._parameters[attr]
            assert old is not None
            module._parameters[attr] = nn.Parameter(old.new_empty(shape), old.requires_grad)
        else:
            buffer = module._buffers[attr]
            assert buffer is not None
            module._buffers[attr] = buffer.new_empty(shape)
