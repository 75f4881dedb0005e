"""Small helpers shared by the metrics modules: mode restoring, input checks, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from shrinkage.errors import UnsupportedModuleError


def require_module(obj: object, what: str) -> nn.Module:
    """Return ``obj`` if it is an ``nn.Module``, else raise naming ``what``."""
    if not isinstance(obj, nn.Module):
        raise UnsupportedModuleError(f"{what}: expected a torch.nn.Module, got {type(obj).__name__}")
    return obj


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and afterwards restore every submodule's own flag.

    Restoring per submodule (not just ``model.train(was_training)``) matters because
    callers sometimes freeze parts of a model (for example BatchNorm in eval while the
    rest trains); a blanket ``train()`` would silently undo that.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        # modules() lists parents before children, so each child's own flag wins.
        for module, flag in flags:
            module.train(flag)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory.

    Readers (or a crash mid-write) then see either the old file or the complete new
    one, never a truncated file; ``os.replace`` is atomic within one filesystem,
    which is why the temp file lives next to the target.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
