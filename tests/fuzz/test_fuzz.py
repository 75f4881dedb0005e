"""Random architectures through compaction: no silent wrong answer, no raw exception.

A seeded run bounded in time (the long run is ``benchmarks/fuzz.py``): every model is
compacted exactly, left as it is, or refused with a ``ShrinkageError`` naming the op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from support.random_models import EXACT, RAW, REFUSED, SELF_CHECK, UNCHANGED, WRONG, fuzz_one, random_model

SEEDS = range(1000, 1200)
TIME_CAP_S = 40.0  # the loaded machine decides how many seeds fit; the first ones always run
MIN_MODELS = 20


@pytest.fixture(autouse=True)
def _one_thread_and_quiet_logs() -> Iterator[None]:
    # tiny models: intra-op threads only add overhead. The MAC counter's meta kernels log
    # each shape they refuse; the fallback is expected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("capture", "seeds"), [("fx", SEEDS), ("auto", range(2000, 2200))], ids=["fx", "auto"])
def test_random_models_compact_exactly_or_are_refused_by_name(capture: str, seeds: range) -> None:
    """``fx``: the fx capture alone; ``auto``: what ``compact()`` does by default
    (torch.export first, fx as fallback)."""
    start = time.monotonic()
    bad, counts = [], dict.fromkeys((EXACT, UNCHANGED, REFUSED), 0)
    for i, seed in enumerate(seeds):
        if i >= MIN_MODELS and time.monotonic() - start > TIME_CAP_S:
            break
        outcome = fuzz_one(seed, capture=capture)
        if outcome.kind in (WRONG, RAW, SELF_CHECK):
            bad.append(f"seed {seed}: {outcome.kind}: {outcome.detail}")
        else:
            counts[outcome.kind] += 1
            if outcome.kind == REFUSED:  # one line that names what stopped it
                assert "\n" not in outcome.detail and "'" in outcome.detail, outcome.detail
    assert not bad, "\n".join(bad)
    assert counts[EXACT] > 0, counts


def test_generator_is_seeded_and_mixes_the_pieces() -> None:
    a, b = random_model(7), random_model(7)
    assert a.description == b.description and torch.equal(a.example_inputs[0], b.example_inputs[0])
    kinds: set[type] = set()
    for seed in range(60):
        kinds |= {type(m) for m in random_model(seed).model.modules()}
    assert {nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MultiheadAttention} <= kinds
