"""The engine registry: for each engine of hw.isa.ENGINES, the host pieces that make it run, in one place.

    Engine(name, commands={opcode or LOAD target: Command(...)}, fast={op kind: job}, compiler="sw.compile.x")

A Command says, for one opcode (or one LOAD target), how the host checks it (sw.runtime.checks), how
the sim model executes it (sw.backends.sim_model) and which class of the cycle model's dispatch
recurrence it belongs to (sw.backends.cycles); commands that run DDR to DDR on the load unit's slot
(DEPTHWISE, VECTOR) give their own duration. Opcodes, LOAD targets and descriptor fields themselves
are declared in hw.isa.ENGINES (hardware and host share them); adding an engine is an ENGINES entry
there and an entry here.

The pieces are looked up by name when first needed (`engines()`), so the registry imports the
checks, the sim model and the compilers without those importing it back at import time.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from hw import isa

#: Classes of the cycle model's recurrence (sw.backends.cycles.simulate): how a command occupies the units.
TIMINGS = ("load", "im2col", "compute", "store", "sync", "attention", "slot")


@dataclass(frozen=True)
class Command:
    """One opcode or LOAD target. `check(cfg, fields, fail, in_buffer)`: the host checks;
    `execute(model, fields, i)`: the sim model's data (None, or (error bit, index) to stop the run);
    `timing`: its class in TIMINGS; `cycles(cfg, fields)`: a "slot" command's duration."""
    check: Callable
    execute: Callable
    timing: str
    cycles: Callable | None = None


@dataclass(frozen=True)
class Engine:
    name: str                                        # as in hw.isa.ENGINES and OverlayConfig.engines
    commands: dict[str, Command]                     # opcode or LOAD target -> Command
    fast: dict[str, Callable] = field(default_factory=dict)   # Program.op kind -> fast job (sw.backends.fast)
    compiler: str = ""                               # the module that compiles its programs

    @property
    def isa(self) -> isa.EngineISA:
        return next(e for e in isa.ENGINES if e.name == self.name)


def _load_entries(model, d, i):
    return model.load_entries(d, i)


@functools.cache
def engines() -> dict[str, Engine]:
    from sw.backends import cycles, fast, sim_vector
    from sw.backends import sim_model as M
    from sw.runtime import checks as CK

    def sync(cfg, d, fail, in_buffer):
        return None

    entries = [
        Engine("gemm", {
            "LOAD": Command(CK._check_load, None, "load"),          # dispatched to its target's Command
            "COMPUTE": Command(CK._check_compute, M.SimOverlay.exec_compute, "compute"),
            "STORE": Command(CK._check_store, M.SimOverlay.exec_store, "store"),
            "SYNC": Command(sync, lambda model, d, i: None, "sync"),
            "A": Command(CK._check_entries, _load_entries, "load"),
            "B": Command(CK._check_entries, _load_entries, "load"),
            "PARAM": Command(CK._check_entries, _load_entries, "load"),
        }, {"linear": fast.linear, "relayout": fast.relayout, "rows_to_planar": fast.rows_to_planar,
            "planar_to_rows": fast.planar_to_rows}, "sw.compile.linear"),
        Engine("attention", {
            "ATTENTION": Command(CK._check_attention, M.SimOverlay.exec_attention, "attention"),
            "V": Command(CK._check_entries, _load_entries, "load"),
        }, {"attention": fast.attention}, "sw.compile.attention"),
        Engine("conv", {
            "IM2COL": Command(CK._check_im2col, M.SimOverlay.exec_im2col, "im2col"),
        }, {"conv": fast.conv}, "sw.compile.conv"),
        Engine("depthwise", {
            "DEPTHWISE": Command(CK._check_depthwise, M.SimOverlay.exec_depthwise, "slot", cycles.depthwise_command),
            "DW": Command(CK._check_entries, _load_entries, "load"),
        }, {"depthwise": fast.depthwise}, "sw.compile.conv"),
        Engine("vector", {
            "VECTOR": Command(CK._check_vector, M.SimOverlay.exec_vector, "slot", sim_vector.cycles),
            "VEC": Command(CK._check_entries, _load_entries, "load"),
        }, {"vector": sim_vector.fast_job}, "sw.compile.vector"),
        # The GEMM store's table (STORE.lut): only its LOAD target; linear programs fill it (sw.compile.linear).
        Engine("store_lut", {"LUT": Command(CK._check_entries, _load_entries, "load")}),
        # The GEMM store's residual add (STORE.add): its LOAD target RES; linear programs fill it.
        Engine("store_add", {"RES": Command(CK._check_entries, _load_entries, "load")}),
        # The transposing LOAD (LOAD.transpose into A, B, V): a mode of those targets' Commands, no target of its own.
        Engine("load_t", {}),
    ]
    table = {e.name: e for e in entries}
    declared = {e.name for e in isa.ENGINES}
    assert set(table) == declared, f"engines without host pieces: {declared - set(table)} (sw/engines.py)"
    for e in entries:
        names = set(e.isa.opcodes) | set(e.isa.targets)
        assert set(e.commands) == names, f"{e.name}: commands {sorted(e.commands)} but hw.isa declares {sorted(names)}"
        assert all(c.timing in TIMINGS for c in e.commands.values())
    return table


@functools.cache
def commands() -> dict[str, Command]:
    """Every opcode and LOAD target -> its Command (the names are unique across engines: hw.isa checks)."""
    return {name: c for e in engines().values() for name, c in e.commands.items()}


@functools.cache
def fast_jobs() -> dict[str, Callable]:
    return {kind: job for e in engines().values() for kind, job in e.fast.items()}


@functools.cache
def engine_of_kind() -> dict[str, str]:
    """Program.op kind -> the engine that runs it (the engine whose fast job it is)."""
    return {kind: e.name for e in engines().values() for kind in e.fast}
