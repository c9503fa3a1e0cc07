"""How golden modules get their tensors: by the official state-dict key names.

A module asks `weights.take(key, shape)`; the same code path serves a real
checkpoint (strict: missing keys, unused keys and wrong shapes are all named
in one error by `check_complete`) and seeded random weights (no checkpoint).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class WeightError(ValueError):
    """A checkpoint does not match the model: the message names every bad key."""


class Weights:
    """Tensors by official key, taken once each by the module that owns them."""

    def __init__(self, tensors: Mapping[str, np.ndarray] | None = None, *, seed: int | None = None,
                 dtype=np.float32):
        if (tensors is None) == (seed is None):
            raise ValueError("Weights needs either tensors (a checkpoint) or a seed (random weights)")
        self._tensors = dict(tensors) if tensors is not None else None
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._dtype = dtype
        self.taken: dict[str, tuple[int, ...]] = {}
        self.missing: list[str] = []
        self.mismatched: list[str] = []

    @property
    def is_random(self) -> bool:
        return self._tensors is None

    def take(self, key: str, shape: tuple[int, ...], *, init: str = "auto") -> np.ndarray:
        """The tensor `key` of `shape`. Problems are collected, not raised, so one
        `check_complete()` names all of them; a placeholder of the right shape is returned."""
        shape = tuple(int(s) for s in shape)
        if key in self.taken:
            raise RuntimeError(f"weight {key!r} taken twice: two modules claim the same key")
        self.taken[key] = shape
        if self._tensors is None:
            return self._random(key, shape, init)
        if key not in self._tensors:
            self.missing.append(key)
            return np.zeros(shape, self._dtype)
        t = np.asarray(self._tensors[key])
        if t.shape != shape:
            self.mismatched.append(f"{key}: checkpoint {tuple(t.shape)}, model {shape}")
            return np.zeros(shape, self._dtype)
        return np.ascontiguousarray(t, dtype=self._dtype)

    def take_prefix(self, prefix: str) -> "PrefixedWeights":
        return PrefixedWeights(self, prefix)

    def unexpected(self) -> list[str]:
        if self._tensors is None:
            return []
        return sorted(k for k in self._tensors if k not in self.taken)

    def check_complete(self) -> None:
        """Strict loading: raise one WeightError naming every missing, unexpected and mis-shaped key."""
        problems = []
        if self.missing:
            problems.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if unexpected := self.unexpected():
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if self.mismatched:
            problems.append(f"shape mismatches ({len(self.mismatched)}): {'; '.join(self.mismatched)}")
        if problems:
            raise WeightError("checkpoint does not match the model:\n  " + "\n  ".join(problems))

    def _random(self, key: str, shape: tuple[int, ...], init: str) -> np.ndarray:
        rng = self._rng
        if init == "auto":
            leaf = key.rsplit(".", 1)[-1]
            init = "fan_in" if len(shape) >= 2 else ("ones" if leaf == "weight" else "small")
        if init == "fan_in":
            fan_in = int(np.prod(shape[1:])) or 1
            t = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif init == "ones":
            t = 1.0 + 0.1 * rng.standard_normal(shape)
        elif init == "small":
            t = 0.1 * rng.standard_normal(shape)
        else:
            raise ValueError(f"unknown init {init!r}")
        return t.astype(self._dtype)


class PrefixedWeights:
    """A view of Weights under `prefix.`, handed to a submodule."""

    def __init__(self, weights: Weights, prefix: str):
        self._w, self._prefix = weights, prefix.rstrip(".") + "."

    def take(self, key: str, shape, *, init: str = "auto") -> np.ndarray:
        return self._w.take(self._prefix + key, shape, init=init)

    def take_prefix(self, prefix: str) -> "PrefixedWeights":
        return PrefixedWeights(self._w, self._prefix + prefix)
