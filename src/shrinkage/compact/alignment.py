"""The channel multiple a device's convolution kernels compute in.

PyTorch runs float convolutions on the CPU through oneDNN, which holds activations in
blocks of channels: 16 per block with AVX-512, 8 with AVX2. A layer whose kept width
is not a multiple of the block pays for the whole last block, so 19 output channels
cost what 32 do. Measured on an AVX-512 CPU (``benchmarks/speed.py``, see the README):
mobilenet_v2 pruned to 50% of its MACs, batch 16, one thread, ran 1.08x faster than the
dense model with the widths as selected, 1.07x with multiples of 8 and 2.17x with
multiples of 16.

``prune(model, x, budget, round_to=channel_multiple())`` keeps every width a multiple of
the block. Where the blocking is what stands between the MACs and the time (mobilenet_v2
above) the saved MACs then become saved time; on small inputs such as CIFAR's 32x32 the
element-wise layers weigh more, and rounding did not speed up a pruned ResNet-20 there.
"""

from __future__ import annotations

import torch

from shrinkage.errors import ConfigError

#: oneDNN's channel block for float32 per instruction set (``torch.backends.cpu.get_cpu_capability()``)
CPU_CHANNEL_BLOCKS = {"AVX512": 16, "AVX2": 8}
#: CUDA: tensor-core kernels want channel counts in multiples of 8 (half precision and
#: TF32); not measured here, no GPU was available to the benchmarks
CUDA_CHANNEL_MULTIPLE = 8


def channel_multiple(device: torch.device | str | None = None) -> int:
    """The multiple kept channel counts should be rounded to on ``device`` (default: CPU).

    16 on a CPU with AVX-512, 8 with AVX2 or on CUDA, else 1 (no alignment known).
    """
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"channel_multiple: '{device}' is not a device ({error})") from None
    if resolved.type == "cuda":
        return CUDA_CHANNEL_MULTIPLE
    if resolved.type != "cpu":
        return 1
    return CPU_CHANNEL_BLOCKS.get(torch.backends.cpu.get_cpu_capability(), 1)
