"""Compiled element-wise loops (Numba) for the integer kernels' hottest passes, where Numba is installed.

NumPy does an element-wise step as one pass over memory per operation: the attention engine's softmax on a
score (scale, round, clip, the tile maximum, the difference, the exp2 table) is eight passes over arrays of
8-byte values. A compiled loop does them in one pass, in registers, in exact integer arithmetic (the spec's
own steps, not a float stand-in). The NumPy path stays: it is what runs without Numba (a board's image may
not have it), and the tests check the two give the same numbers.

Numba is a dependency in pyproject.toml; `SAM2FPGA_JIT=0` turns the compiled loops off (NumPy only). A loop
is compiled on its first call (~1 s) and kept in `__pycache__` for the next processes (`cache=True`); it
releases the GIL (`nogil=True`), so golden_model.workers' threads run it side by side.
"""
from __future__ import annotations

import importlib.util
import os

ENV = "SAM2FPGA_JIT"
#: Whether Numba is installed (found, not imported: importing it costs ~0.3 s, paid on a kernel's first call).
INSTALLED = importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether compiled loops run: Numba installed and not turned off by SAM2FPGA_JIT=0."""
    return INSTALLED and os.environ.get(ENV, "1") != "0"


class kernel:
    """fn compiled on its first call (nopython, without the GIL, cached on disk); call it only when
    `available()`. `signatures`: the argument types it was compiled for (none before its first call)."""

    def __init__(self, fn):
        self.fn, self._compiled = fn, None
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        if self._compiled is None:
            import numba
            self._compiled = numba.njit(cache=True, nogil=True, error_model="numpy")(self.fn)
        return self._compiled(*args)

    @property
    def signatures(self) -> list:
        return [] if self._compiled is None else list(self._compiled.signatures)
