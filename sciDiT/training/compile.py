"""``torch.compile`` (inductor) of the DiT with dynamic shapes and a clean eager fallback.

Set sizes differ from batch to batch (the size-bucketed sampler gives every batch its own padded
length, sampling batches have their own sizes), so modules are compiled with ``dynamic=True``:
one graph serves every batch size and set length instead of a recompilation per new shape, and no
extra padding is needed. Training compiles in place (``nn.Module.compile``), so parameter names,
``state_dict`` and checkpoints stay those of the eager module; sampling takes a compiled wrapper
that shares the module's parameters. Where inductor cannot run (no
C++ compiler for the CPU backend, an unsupported platform), :func:`compile_module` warns in one
line and leaves the module eager.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import nn


@cache
def compile_problem(device_type: str) -> str | None:
    """Why torch.compile cannot run on ``device_type`` here (one line), or None: compiles and runs a tiny function once."""
    try:
        fn = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2.0, dynamic=False)
        fn(torch.ones(8, device=device_type))
    except Exception as err:  # inductor raises many kinds (missing compiler, unsupported platform, ...)
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"
    return None


def compile_module(module: nn.Module, device_type: str, what: str = "the DiT", in_place: bool = False) -> nn.Module:
    """``module`` compiled with dynamic shapes (in place, or a wrapper sharing its parameters).

    Where compilation is unavailable: a one-line warning, and ``module`` itself, eager.
    """
    problem = compile_problem(device_type)
    if problem is not None:
        warnings.warn(f"torch.compile unavailable on {device_type} ({problem}); running {what} eagerly", stacklevel=2)
        return module
    if in_place:
        module.compile(dynamic=True)
        return module
    return torch.compile(module, dynamic=True)
