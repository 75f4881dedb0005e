"""Exact forms of a layer: the registry, and building + choosing among them.

After compaction a layer can often be computed in several exact ways: a conv with
zeroed filter-shape columns as a plain conv over its kept input channels, as a conv
with a cropped kernel, or as a GEMM over its kept im2col columns; a factorized layer
as two thin layers or as their dense product. Which is fastest depends on the shapes
and the machine, not on the MAC count alone. Each way is one :class:`LayerForm`
object, registered per *subject* type (the type of the thing it rewrites: ``nn.Conv2d``,
``nn.Linear``, :class:`~shrinkage.compact.low_rank_forms.LowRank`) with
:func:`register_form`; a user adds a form the same way. :func:`choose_form` builds
every applicable form, checks that each reproduces the first (the reference form) on
the layer's recorded input, counts its MACs and lets a
:class:`~shrinkage.compact.choice.FormPolicy` pick one.

The chosen layer carries its :class:`~shrinkage.compact.choice.FormChoice` as the
attribute ``form_choice``; :func:`form_choices` collects them from a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from shrinkage.compact.choice import Candidate, FormChoice, FormPolicy
from shrinkage.errors import ConfigError, ShrinkageError

#: attribute under which a layer built by a form choice keeps its record
FORM_CHOICE = "form_choice"

#: relative difference (to the output's scale) above which a form is not exact: a bug
_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FormContext:
    """What a form may take into account besides its subject.

    ``select_min_fraction``: select inputs away only when at least this fraction is
    unused; ``lower_min_fraction``: lower a conv to a GEMM only when at least this
    fraction of its columns is zero; ``round_to``: kept input widths a form selects are
    rounded up to a multiple of it (by keeping unused inputs, which read zero weights).
    """

    layer: str
    select_min_fraction: float = 0.05
    lower_min_fraction: float = 0.25
    round_to: int = 1
    #: what the forms of this layer computed about a weight and may share (every conv
    #: form asks which weight columns are used): ``(id(weight), version) -> answer``
    shared: dict[tuple[int, int], Tensor] = field(default_factory=dict, compare=False, repr=False)


class LayerForm(ABC):
    """One exact way to compute a layer. ``build`` returns ``None`` where it does not apply."""

    #: the form's name in records and reports
    label: ClassVar[str]
    #: equal MACs go to the lowest (the simplest form)
    simplicity: ClassVar[int]

    @abstractmethod
    def build(self, subject: Any, ctx: FormContext) -> nn.Module | None:
        """The layer in this form, or ``None``. ``subject`` is the caller's own copy, so
        the result may share tensors with it (or be it), never with the original model."""


FORMS: dict[type, list[LayerForm]] = {}


def register_form(subject_type: type, form: LayerForm) -> LayerForm:
    """Offer ``form`` for subjects of exactly ``subject_type`` (subclasses may compute
    differently, so they are not assumed to share forms). A form with the label of one
    already registered for that type replaces it; the first registered form of a type is
    its reference: every other form must reproduce its output."""
    if not isinstance(form, LayerForm):
        raise ConfigError(f"register_form: {form!r} is not a LayerForm")
    forms = FORMS.setdefault(subject_type, [])
    for i, existing in enumerate(forms):
        if existing.label == form.label:
            forms[i] = form
            return form
    forms.append(form)
    return form


def forms_for(subject: Any) -> list[LayerForm]:
    return list(FORMS.get(type(subject), ()))


def _run_counted(module: nn.Module, x: Tensor) -> tuple[Tensor, int]:
    """``module(x)`` and its multiply-accumulates, counted by torch's flop counter."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        y = module(x)
    return y, counter.get_total_flops() // 2


def choose_form(
    subject: Any, x: Tensor, ctx: FormContext, policy: FormPolicy, device: torch.device | None = None
) -> tuple[nn.Module, FormChoice] | None:
    """Build ``subject``'s applicable forms, check them on ``x`` and let ``policy`` pick one
    (timed on ``device``, default ``x``'s). ``None`` when fewer than two forms apply."""
    built = [(form, m) for form in forms_for(subject) if (m := form.build(subject, ctx)) is not None]
    if len(built) < 2:
        return None
    candidates = []
    reference: Tensor | None = None
    for form, module in built:
        module.eval()
        y, macs = _run_counted(module, x)
        if reference is None:
            reference = y
        else:
            scale = max(float(reference.abs().max()) if reference.numel() else 0.0, 1.0)
            diff = float((y - reference).abs().max()) if y.shape == reference.shape and y.numel() else (
                0.0 if y.shape == reference.shape else float("inf"))  # fmt: skip
            if not diff <= _TOLERANCE * scale:
                raise ShrinkageError(
                    f"form '{form.label}' of layer '{ctx.layer}' differs from form "
                    f"'{built[0][0].label}' by {diff:.3g}; please report this"
                )
        candidates.append(Candidate(form.label, form.simplicity, module, macs))
    choice = policy.choose(ctx.layer, candidates, x, device or x.device)
    chosen = next(c.module for c in candidates if c.form == choice.chosen)
    return chosen, choice


def mark(module: nn.Module, choice: FormChoice) -> nn.Module:
    """Attach ``choice`` to ``module`` (a plain attribute: copied with the module, not saved)."""
    setattr(module, FORM_CHOICE, choice)
    return module


def form_choices(model: nn.Module) -> dict[str, FormChoice]:
    """``{layer name: FormChoice}`` of every layer of ``model`` whose form was chosen."""
    return {
        name: choice for name, m in model.named_modules()
        if isinstance(choice := getattr(m, FORM_CHOICE, None), FormChoice)
    }  # fmt: skip
