"""cocotb bench: hw.vector.engine.VectorEngine against golden_model.intvec, one test per op.

Each test runs, on one engine, the op's cases (sim.benches.vector_cases): random data, constant
rows, int8 extremes, D not a multiple of L, D = 1 (LayerNorm also rows of 1,024), with random
stalls on every stream, then a steady-state run without stalls whose elements per cycle (on the
busier stream: max-pool's input, upsample's output, the others' output) it reports.
Parameters from the environment: BENCH_LANES, BENCH_SEED, BENCH_STALL.
"""
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from hw.vector import params as P
from sim.benches.report import write_report
from sim.benches.streams import StreamSink, StreamSource, pack_fields
from sim.benches.vector_cases import OPS, make_case, out_beats

LANES = int(os.environ.get("BENCH_LANES", "8"))
SEED = int(os.environ.get("BENCH_SEED", "1"))
STALL = float(os.environ.get("BENCH_STALL", "0.3"))


def _words(rows: np.ndarray) -> list[int]:
    return [int.from_bytes(b.tobytes(), "little") for b in P.to_beats(rows, LANES)]


def _rows(words: list[int], dim: int) -> np.ndarray:
    raw = np.frombuffer(b"".join(w.to_bytes(LANES, "little") for w in words), np.int8).reshape(-1, LANES)
    return P.from_beats(raw, dim)


class _Cycles:
    """Cycle stamps of the beats handshaken on a stream."""

    def __init__(self, dut, prefix):
        self.valid, self.ready = getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready")
        self.stamps, self.running = [], True

    async def watch(self, clk):
        cycle = 0
        while self.running:
            await ReadOnly()
            if self.valid.value and self.ready.value:
                self.stamps.append(cycle)
            await RisingEdge(clk)
            cycle += 1


async def run_case(dut, case, stall: float, seed: int):
    """One command: parameter writes, the command, its rows; returns (output rows, stamps in, out)."""
    rng = random.Random(seed)
    param = StreamSource(dut, "param", dut.clk, stall=stall, rng=rng)
    await param.send([pack_fields([(int(t), 2), (a, P.ADDR_BITS), (d, P.PARAM_DATA_BITS)])
                      for t, a, d in case.writes])
    cmd = StreamSource(dut, "cmd", dut.clk)
    fields = dict(P.COMMAND_FIELDS)
    await cmd.send([pack_fields([(case.cmd[k], fields[k]) for k, _ in P.COMMAND_FIELDS])])
    src = StreamSource(dut, "i", dut.clk, stall=stall, rng=random.Random(seed + 1))
    sink = StreamSink(dut, "o", dut.clk, stall=stall, rng=random.Random(seed + 2))
    stamps_in, stamps_out = _Cycles(dut, "i"), _Cycles(dut, "o")
    cocotb.start_soon(stamps_in.watch(dut.clk))
    cocotb.start_soon(stamps_out.watch(dut.clk))
    cocotb.start_soon(src.send(_words(case.a)))
    if case.b is not None:
        b_src = StreamSource(dut, "b", dut.clk, stall=stall, rng=random.Random(seed + 3))
        cocotb.start_soon(b_src.send(_words(case.b)))
    got = _rows(await sink.receive(out_beats(case, LANES)), case.dim)
    stamps_in.running = stamps_out.running = False
    for _ in range(4):
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert not dut.busy.value, f"{case.name}: still busy after its last beat"
    await RisingEdge(dut.clk)
    bad = np.argwhere(got != case.expected)
    assert bad.size == 0, (f"{case.name}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                           f"rtl {got[tuple(bad[0])]} golden {case.expected[tuple(bad[0])]}")
    return stamps_in.stamps, stamps_out.stamps


async def run_op(dut, op: str):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for port in ("param", "cmd", "i", "b"):
        getattr(dut, f"{port}__valid").value = 0
    dut.o__ready.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    L = LANES
    rope = op == "rope"
    cases = [make_case(op, L, 24, 4 * L if rope else 3 * L, SEED, "random"),          # D a multiple of L
             make_case(op, L, 16, 2 * L + (4 if rope else 3), SEED + 1, "random"),    # not; rope: full tables
             make_case(op, L, 16, 4 * L, SEED + 2, "constant"),
             make_case(op, L, 16, 4 * L, SEED + 4, "extremes")]
    if not rope:
        cases.append(make_case(op, L, 9, 1, SEED + 5, "random"))
    if op == "layernorm":
        cases += [make_case(op, L, 3, 1024, SEED + 6, kind) for kind in ("random", "extremes")]
    for i, case in enumerate(cases):
        await run_case(dut, case, STALL, SEED + 10 * i)
    # steady state
    steady = make_case(op, L, 32 if op == "upsample" else 96, 8 * L, SEED + 7, "random")
    t_in, t_out = await run_case(dut, steady, 0.0, SEED)
    stamps, beats = (t_in, len(steady.a)) if op == "maxpool" else (t_out, len(steady.expected))
    beats *= P.beats(steady.dim, L)
    assert len(stamps) == beats
    rate = beats * L / (stamps[-1] - stamps[0] + 1)
    write_report(dut, op=op, steady=True, lanes=L, dim=steady.dim, rows=len(steady.a),
                 cycles=stamps[-1] - stamps[0] + 1, elements_per_cycle=rate)


@cocotb.test()
@cocotb.parametrize(op=OPS)
async def op_matches_golden(dut, op):
    await run_op(dut, op)
