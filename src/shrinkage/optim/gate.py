"""Which zeros a proximal step may make and keep, while a budget controller runs.

* **Held zeros.** A proximal step keeps a zero group zero only while the (momentum) step
  into it stays below the threshold, so lowering the strength lets groups with a strong
  gradient grow back (coupled channels and heads cannot: their gradient is zero once
  every slice is zero). A group that was zero after a step is zero again after the next
  one, as ``ZeroMask`` does while fine-tuning: the target only decreases, and a revived
  group would spend MACs already given up elsewhere.
* **Admitted zeros.** Because zeros are held, zeroing too much is permanent. The zeros a
  step makes (groups, and singular values a nuclear norm drops below the last step's
  rank) are proposals: while the estimate with all of them stays at or above the floor
  (the current target less a relative slack: at a 5% budget an
  absolute one would be a tenth of the budget) they are all kept; otherwise the weakest before the
  prox are admitted while the estimate stays above the floor, plus the next one if that
  lands closer to the target than stopping short (coarse groups: one filter may be worth
  more than the slack), and the others keep their pre-prox weights (singular values);
  they stay small, and the controller lowers the strength that pushed them. Ranks are
  checked every step (one ``svdvals`` per nuclear term; the prox's SVD again only when
  the rank fell too far) and not held: singular values move continuously and come back.
* **No emptied layers.** A term whose every filter, channel or shape column is zero cuts
  the network in two; compaction then removes everything on one side, which the
  estimate cannot see (and the model is useless). Such a term keeps its strongest group.
  Depth and head terms may lose every group: a whole block or attention goes by design.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from shrinkage.groups import Depth, Heads
from shrinkage.optim.costs import rank_from
from shrinkage.optim.estimators import StructureMacEstimator, summary_of
from shrinkage.optim.regularizer import Regularizer
from shrinkage.penalties import NuclearNorm

#: kinds whose groups are whole structures: every one of them may go
_MAY_EMPTY = (Depth, Heads)

Proposal = tuple[float, int, int]  # (norm or singular value before the prox, term index, group or rank index)


class ZeroGate:
    """Holds and admits the zeros of a regularizer's terms (see the module docstring)."""

    def __init__(self, regularizer: Regularizer, estimator: StructureMacEstimator) -> None:
        self.regularizer, self.terms, self.estimator = regularizer, regularizer.terms, estimator
        self.gated = [i for i, t in enumerate(self.terms) if t.penalty.induces_zeros]
        self.ranked = [i for i, t in enumerate(self.terms) if isinstance(t.penalty, NuclearNorm)]
        self.dead: list[Tensor | None] = [None] * len(self.terms)
        self.ranks: list[int | None] = [None] * len(self.terms)
        self._spectra: dict[int, Tensor] = {}  # singular values at the last rank check
        self._before: list[Tensor | None] = [None] * len(self.terms)

    def state_dict(self) -> dict[str, Any]:
        spectra = [self._spectra.get(i) for i in range(len(self.terms))]
        return {"dead": list(self.dead), "ranks": list(self.ranks), "spectra": spectra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dead = list(state["dead"])
        self.ranks = [None if r is None else int(r) for r in state["ranks"]]
        self._spectra = {i: s for i, s in enumerate(state["spectra"]) if s is not None}

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the terms' matrices between the gradient step and the prox."""
        for i in self.gated + self.ranked:
            self._before[i] = self.terms[i].grouping.gather().detach().clone()

    @torch.no_grad()
    def settle(
        self, target: float, slack: float, estimate: Callable[[float], float], lrs: dict[int, float], step: int
    ) -> None:
        """After the prox: admit new zeros down to ``target * (1 - slack)``, re-zero held groups,
        record the zeros and ranks. ``estimate`` maps a raw estimate to the one compared
        with the target; ``lrs`` are the threshold learning rates of this step, ``step``
        the proximal step count (a term with ``every = k`` is ranked on its prox steps only).

        Terms may share parameters (the coupled groups of consecutive layers: one holds a
        layer's rows, the next its columns), so all restores are written before all zeros,
        each on a fresh gather: a zero always wins over a restored weight.
        """
        if not self.ranked and not self._new_zeros():
            self._before = [None] * len(self.terms)
            return
        summaries: list[Tensor] = [torch.zeros(0)] * len(self.terms)
        zero: dict[int, Tensor] = {}
        proposals: list[Proposal] = []
        refused: list[Proposal] = []
        for i in self.gated:
            found, must_keep = self._group_proposals(i, summaries, zero)
            proposals += found
            refused += must_keep
        for i in self.ranked:
            proposals += self._rank_proposals(i, summaries, step % self.terms[i].every == 0)
        for _, i, g in refused:
            summaries[i][g] = 1.0  # any non-zero value: the group survives
        if proposals:
            refused += self._refuse(sorted(proposals), summaries, target, slack, estimate)
        for _, i, g in refused:
            if i in zero:
                zero[i][g] = False
        self._write(refused, zero, lrs)

    def _new_zeros(self) -> bool:
        """Re-zero the held groups and say whether the prox made any new zero (the common
        case is none: this costs one synchronization with the device per step)."""
        new = torch.zeros((), dtype=torch.bool)
        for i in self.gated:
            grouping, dead = self.terms[i].grouping, self.dead[i]
            matrix = grouping.gather().detach()
            zero = matrix.abs().amax(dim=1) == 0
            if dead is None:
                return True
            dead = dead.to(zero.device)
            new = new.to(zero.device) | (zero & ~dead).any()
            grouping.scatter_(matrix.masked_fill(dead.unsqueeze(1), 0))
        return bool(new)

    def _group_proposals(
        self, i: int, summaries: list[Tensor], zero: dict[int, Tensor]
    ) -> tuple[list[Proposal], list[Proposal]]:
        """New zero groups of term ``i`` (weakest first), and the one an emptied layer keeps."""
        matrix = self.terms[i].grouping.gather().detach()
        zero[i] = matrix.abs().amax(dim=1) == 0
        dead = cast(Tensor, self.dead[i]).to(zero[i].device) if self.dead[i] is not None else torch.zeros_like(zero[i])
        zero[i] |= dead
        summaries[i] = matrix.double().norm(dim=1).masked_fill(zero[i], 0.0)
        before = self._before[i]
        new = (zero[i] & ~dead).nonzero().flatten()
        if before is None or not new.numel():
            return [], []
        norms = before.double().norm(dim=1)
        found = sorted((float(norms[g]), i, int(g)) for g in new)
        if bool(zero[i].all()) and not isinstance(self.terms[i].kind, _MAY_EMPTY):
            return found[:-1], found[-1:]  # the strongest group survives
        return found, []

    def _rank_proposals(self, i: int, summaries: list[Tensor], proxed: bool) -> list[Proposal]:
        """Singular values term ``i`` lost below its last rank, as they were before the prox.
        Between its prox steps the gradient step only adds rank: the last check stands."""
        if not proxed and i in self._spectra:
            summaries[i] = self._spectra[i]
            return []
        summaries[i] = self._spectra[i] = summary_of(self.terms[i], self.terms[i].grouping.gather())
        rank, previous, before = rank_from(summaries[i]), self.ranks[i], self._before[i]
        self.ranks[i] = rank
        if previous is None or rank >= previous or before is None:
            return []
        values = torch.linalg.svdvals(before.double())
        return [(float(values[k]), i, k) for k in range(rank, min(previous, values.numel()))]

    def _refuse(
        self,
        proposals: list[Proposal],
        summaries: list[Tensor],
        target: float,
        slack: float,
        estimate: Callable[[float], float],
    ) -> list[Proposal]:
        """The proposals past the longest prefix (weakest first) whose estimate stays at or
        above ``target * (1 - slack)``, or past one more when that lands closer to the target."""
        floor = target * (1.0 - slack)

        def estimate_with(k: int) -> float:
            trial = [s.clone() for s in summaries]
            for _, i, g in proposals[k:]:
                trial[i][g] = max(1.0, float(trial[i].max()))  # survives (and counts for a rank)
            return estimate(self.estimator.from_summaries(trial))

        if estimate_with(len(proposals)) >= floor:
            return []
        low, high = 0, len(proposals)  # estimate_with(low) >= floor > estimate_with(high), unless low = 0
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if estimate_with(mid) >= floor else (low, mid)
        if low == 0 and estimate_with(0) < floor:
            return proposals
        stop, past = estimate_with(low), estimate_with(low + 1)
        return proposals[low + 1 :] if stop > target and abs(past - target) < abs(stop - target) else proposals[low:]

    def _write(self, refused: list[Proposal], zero: dict[int, Tensor], lrs: dict[int, float]) -> None:
        """Restore what was refused, then zero every held or admitted group, then record
        the zeros and ranks as they are in the parameters."""
        for i in sorted({i for _, i, _ in refused}):
            before = self._before[i]
            assert before is not None
            matrix = self.terms[i].grouping.gather().detach().clone()
            kept = [g for _, j, g in refused if j == i]
            if i in zero:
                rows = torch.tensor(kept, dtype=torch.long, device=matrix.device)
                matrix[rows] = before[rows].to(matrix.dtype)
            else:
                term = self.terms[i]
                threshold = self.regularizer.step_for(term, lrs) * term.penalty.strength
                matrix = _threshold_keeping(before, threshold, kept).to(matrix.dtype)
                self._spectra[i] = summary_of(term, matrix)
                self.ranks[i] = rank_from(self._spectra[i])
            self.terms[i].grouping.scatter_(matrix)
        for i in self.gated:
            if bool(zero[i].any()):
                matrix = self.terms[i].grouping.gather().detach().clone()
                if bool(matrix[zero[i]].abs().amax() > 0):
                    matrix[zero[i]] = 0
                    self.terms[i].grouping.scatter_(matrix)
        for i in self.gated:
            self.dead[i] = self.terms[i].grouping.gather().detach().abs().amax(dim=1) == 0
        self._before = [None] * len(self.terms)


def _threshold_keeping(matrix: Tensor, threshold: float, kept: Sequence[int]) -> Tensor:
    """Singular value thresholding of ``matrix`` that leaves the singular values at
    positions ``kept`` (in descending order) as they were; zero rows and columns stay zero."""
    zero_rows = matrix.abs().amax(dim=1) == 0
    zero_cols = matrix.abs().amax(dim=0) == 0
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    shrunk = torch.clamp(s - threshold, min=0)
    index = torch.tensor(list(kept), dtype=torch.long, device=s.device)
    shrunk[index] = s[index]
    out: Tensor = (u * shrunk) @ vh
    out[zero_rows] = 0
    out[:, zero_cols] = 0
    return out
