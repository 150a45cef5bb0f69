"""Which selective-scan implementation runs: chosen by ``MKEVAL_MAMBA_BACKEND`` or the ``backend`` option.

``auto``       mamba_ssm's fused CUDA kernels for tensors on a GPU when ``mamba-ssm`` and
               ``causal-conv1d`` are installed, otherwise the pure-PyTorch scan (on a GPU
               without them it says so once, in a warning); on the CPU the compiled scan when
               numba is installed, otherwise the pure-PyTorch scan.
``cuda``       mamba_ssm's kernels, or an error saying what is missing.
``compiled``   the scan's recurrence compiled by numba (``compiled.py``), CPU tensors only.
``torch``      the pure-PyTorch chunked scan (``scan.selective_scan``), on any device.
``reference``  the sequential loop (``scan.selective_scan_ref``): slow, for checking.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from typing import Callable, NamedTuple

import torch

from mkeval import UsageError

from .scan import numba_installed

log = logging.getLogger(__name__)

ENV_VAR = "MKEVAL_MAMBA_BACKEND"
BACKENDS = ("auto", "cuda", "compiled", "torch", "reference")
INSTALL_HINT = (
    "install them with `pip install 'mkeval[cuda]'` (or `pip install mamba-ssm causal-conv1d`) on a CUDA machine"
)


class BackendUnavailable(UsageError):
    """The requested backend cannot run here; the message says what is missing and how to get it."""


class CudaKernels(NamedTuple):
    selective_scan_fn: Callable
    causal_conv1d_fn: Callable


def requested_backend(value: str | None = None) -> str:
    """The backend asked for: ``value`` if given, else ``$MKEVAL_MAMBA_BACKEND``, else ``auto``."""
    source = "the backend option" if value is not None else ENV_VAR
    name = (value if value is not None else os.environ.get(ENV_VAR, "auto")).strip().lower() or "auto"
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown Mamba backend {name!r} (from {source}).{hint} Choose one of: {', '.join(BACKENDS)}.")
    return name


@functools.cache
def _import_cuda_kernels() -> CudaKernels | str:
    """mamba_ssm's kernels, or a string saying why they cannot be imported."""
    missing = []
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or a build that does not match this torch
        selective_scan_fn = None
        missing.append(f"mamba-ssm ({type(exc).__name__}: {exc})")
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as exc:
        causal_conv1d_fn = None
        missing.append(f"causal-conv1d ({type(exc).__name__}: {exc})")
    if missing:
        return "cannot import " + " and ".join(missing)
    return CudaKernels(selective_scan_fn, causal_conv1d_fn)


def cuda_kernels() -> CudaKernels:
    """mamba_ssm's selective scan and causal-conv1d's convolution; BackendUnavailable if missing."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{ENV_VAR}=cuda needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}); "
            f"it also needs the mamba-ssm and causal-conv1d packages: {INSTALL_HINT}. "
            f"Set {ENV_VAR}=torch (or auto) to use the pure-PyTorch scan."
        )
    kernels = _import_cuda_kernels()
    if isinstance(kernels, str):
        raise BackendUnavailable(
            f"{ENV_VAR}=cuda needs the mamba-ssm and causal-conv1d packages: {kernels}. {INSTALL_HINT}; "
            f"or set {ENV_VAR}=torch to use the pure-PyTorch scan."
        )
    return kernels


def check_requested(name: str) -> None:
    """Fail at build time, not at the first forward, when ``cuda`` or ``compiled`` cannot run on this machine."""
    if name == "cuda":
        cuda_kernels()
    if name == "compiled" and not numba_installed():
        raise BackendUnavailable(
            f"{ENV_VAR}=compiled needs the numba package, which is not installed: `pip install numba` "
            f"(a dependency of mkeval), or set {ENV_VAR}=torch for the pure-PyTorch scan."
        )


_warned_auto_fallback = False


def backend_for(name: str, device: torch.device) -> str:
    """The backend that runs for requested ``name`` on tensors on ``device``."""
    global _warned_auto_fallback
    if name == "cuda":
        if device.type != "cuda":
            raise BackendUnavailable(
                f"{ENV_VAR}=cuda runs only on CUDA tensors, but the input is on {device}. "
                f"Move the model to a GPU, or set {ENV_VAR}=torch."
            )
        cuda_kernels()
        return "cuda"
    if name == "compiled":
        check_requested(name)
        if device.type != "cpu":
            raise BackendUnavailable(
                f"{ENV_VAR}=compiled runs on CPU tensors, but the input is on {device}. "
                f"Set {ENV_VAR}=auto (or cuda, or torch) on a GPU."
            )
        return "compiled"
    if name == "auto":
        if device.type != "cuda":
            return "compiled" if device.type == "cpu" and numba_installed() else "torch"
        kernels = _import_cuda_kernels()
        if isinstance(kernels, str):
            if not _warned_auto_fallback:
                log.warning(
                    "Mamba on %s uses the pure-PyTorch scan, not mamba_ssm's fused kernels: %s. %s.",
                    device, kernels, INSTALL_HINT,
                )
                _warned_auto_fallback = True
            return "torch"
        return "cuda"
    return name
