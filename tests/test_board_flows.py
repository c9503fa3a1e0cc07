"""`sam2fpga build`: the Vivado Tcl flow (dry-run in a Tcl interpreter), lint of the overlay and the open ECP5
flow on the small preset (the whole-overlay yosys estimates: tests/test_board_estimates.py)."""
import json
import re

import pytest

from hw import isa
from hw.boards import BOARDS
from hw.config import preset
from hw.flows.estimate import Resources
from hw.flows.lint import lint
from hw.flows.vivado import bus_ports, vivado_tcl
from hw.overlay import Overlay
from sw.cli import main
from sw.commands.build import DEFAULT_PRESET, TOP

ECP5_TIMED = "ulx3s-gemm"       # the preset the ECP5 place-and-route test builds
from tests.vivado_dryrun import dry_run

ZYNQ = [b for b in BOARDS.values() if b.vendor == "xilinx"]


def _tcl_for(board):
    cfg = preset(DEFAULT_PRESET[board.name])
    return cfg, vivado_tcl(signature=Overlay(cfg).signature, top_name=TOP, verilog_file=f"{TOP}.v",
                           board=board, clock_mhz=cfg.clock_mhz, axi_data_bits=cfg.axi_data_bits,
                           axi_addr_bits=cfg.axi_addr_bits, design_name=f"d_{board.name}")


@pytest.fixture(scope="module")
def small_overlay_verilog():
    # The rtl backend's conversion of the same overlay (the same text, top TOP), kept while hw/ is unchanged:
    # the rtl tests of the `sim` preset convert it anyway (10-60 s each time).
    from sw.backends.rtl import overlay_verilog
    return overlay_verilog(preset("sim"))


@pytest.mark.parametrize("board", ZYNQ, ids=lambda b: b.name)
def test_vivado_tcl_runs_to_the_end_with_values_from_the_config(board):
    cfg, tcl = _tcl_for(board)
    calls = dry_run(tcl)
    vendor, library, name, version = isa.IP_VLNV.split(":")
    assert any(c[0] == "ipx::package_project" and c[c.index("-vendor") + 1] == vendor
               and c[c.index("-library") + 1] == library for c in calls)
    assert any(c[:3] == ["set_property", "name", name] for c in calls)
    assert any(c[:3] == ["set_property", "version", version] for c in calls)
    assert any(c[0] == "create_bd_cell" and isa.IP_VLNV in c and isa.IP_INSTANCE in c for c in calls)
    cells = {c[-1] for c in calls if c[0] == "create_bd_cell"}
    for c in calls:       # every pin and address segment named belongs to a cell the script made
        if c[0] in ("get_bd_pins", "get_bd_intf_pins", "get_bd_addr_segs", "get_bd_addr_spaces"):
            assert c[1].split("/")[0] in cells, c
    words = next(c[2] for c in calls if c[:2] == ["set_property", "-dict"] and "FREQMHZ" in c[2]).split()
    ps_config = dict(zip(words[::2], words[1::2]))
    hp_width = ps_config.get("CONFIG.PSU__SAXIGP2__DATA_WIDTH") or ps_config.get("CONFIG.PCW_S_AXI_HP0_DATA_WIDTH")
    assert int(hp_width) == cfg.axi_data_bits == board.axi_data_bits
    freq = ps_config.get("CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ") or ps_config.get("CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ")
    assert int(freq) == int(cfg.clock_mhz)
    assert any(c[0] == "create_project" and board.part in c for c in calls)   # ...and arrives
    assert any(c[0] == "file copy" and c[-1].endswith(f"d_{board.name}.hwh") for c in calls)
    assert any(c[0] == "file copy" and c[-1].endswith(f"d_{board.name}.bit") for c in calls)


def test_vivado_tcl_stops_on_failed_timing_and_missing_board_files():
    _, tcl = _tcl_for(BOARDS["kv260"])
    with pytest.raises(Exception, match="timing not met"):
        dry_run(tcl, slack="-0.3")
    with pytest.raises(Exception, match="no board files"):
        dry_run(tcl, board_parts=())
    with pytest.raises(Exception, match="implementation failed"):
        dry_run(tcl, progress="50%")


def test_ip_port_maps_are_the_verilog_ports(small_overlay_verilog):
    """Every AXI signal mapped in the IP is a port of the generated module, and vice versa."""
    sig = Overlay(preset("sim")).signature
    mapped = {phys for bus in bus_ports(sig) for _, phys in bus.signals}
    header = re.search(rf"module {TOP}\((.*?)\);", small_overlay_verilog.read_text(), re.S).group(1)
    ports = {p.strip() for p in header.split(",")}
    assert mapped | {"clk", "rst", "irq"} == ports


def test_overlay_verilog_lints_clean(small_overlay_verilog):
    lint(small_overlay_verilog, TOP)


@pytest.mark.parametrize("argv, message", [
    (["build", "--board", "zedboard"], "invalid choice"),
    (["build", "--board", "kv260", "--preset", "nope"], "unknown preset"),
    (["build", "--board", "pynq-z2", "--preset", "kv260"], "HP port is 64-bit"),
    (["build", "--board", "kv260", "--placer", "heap"], "they are for --board ulx3s-85f"),
    (["build", "--board", "ulx3s-85f", "--placer", "sa"], "invalid choice"),
])
def test_build_bad_input_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_build_refuses_a_preset_that_does_not_fit(monkeypatch, tmp_path, capsys):
    import hw.flows.estimate as est
    monkeypatch.setattr(est, "estimate_by_engine",
                        lambda *a, **k: (Resources(luts=1000, ffs=1000, dsps=999, bram36=10), {}))
    assert main(["build", "--board", "pynq-z2", "--preset", "pynq-z2", "-o", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "does not fit xc7z020clg400-1" in err and "DSP: 999 used > 220" in err
    assert "dsps:       999 / 220       (454.1 %)  over the 85 % target" in out


def test_build_says_when_the_estimate_fails(monkeypatch, tmp_path):
    import hw.flows.estimate as est
    from sw.commands import build
    from sw.errors import CommandError

    def killed(*a, **k):
        raise est.EstimateError("yosys was killed (signal 9: out of memory?) on x.v")
    monkeypatch.setattr(est, "estimate_by_engine", killed)
    with pytest.raises(CommandError, match=r"the resource estimate failed: yosys was killed \(signal 9"):
        build._estimate(tmp_path / "x.v", BOARDS["kv260"], tmp_path)


def test_every_board_preset_has_the_multipliers_it_needs():
    """The structural DSP floor of each board's own preset is within its part (a 16 x 16 PYNQ-Z2
    preset needed 324 DSPs of 220 and only the 10-minute yosys estimate said so)."""
    from hw.flows.estimate import dsp_floor
    for name, b in BOARDS.items():
        assert dsp_floor(preset(DEFAULT_PRESET[name])) <= b.dsps, name
    assert dsp_floor(preset("sim").replace(engines=("gemm",))) == 4 * 8 + 4 * 8     # array + requantisers
    assert dsp_floor(preset("sim").replace(engines=("gemm",), dsp_packing=True)) == 4 * 8 // 2 + 4 * 8


def test_build_refuses_a_preset_without_enough_multipliers_at_once(monkeypatch, tmp_path, capsys):
    import hw.config as config
    import hw.flows.estimate as est
    big = preset("pynq-z2").replace(name="big", rows=16, cols=16)
    monkeypatch.setitem(config.PRESETS, "big", big)
    monkeypatch.setattr(est, "estimate_by_engine", lambda *a, **k: pytest.fail("the estimate must not run"))
    assert main(["build", "--board", "pynq-z2", "--preset", "big", "-o", str(tmp_path)]) == 1
    # 16 x 16 packed: 128 DSPs + 8 requantisers x 4; its P V array 256 (one per MAC)
    assert est.dsp_floor_by_engine(big) == {"gemm": 160, "attention": 256, "conv": 0}
    # P V rows in LUTs take no DSPs: 16 - 5 rows of 16
    assert est.dsp_floor_by_engine(big.replace(attn_pv_lut_rows=5))["attention"] == 11 * 16
    assert "need at least 416 multipliers (DSP blocks), the part has 220" in capsys.readouterr().err


def test_build_zynq_without_vivado_generates_and_says_how(tmp_path, capsys, monkeypatch):
    import hw.flows.estimate as est
    parts = {"gemm": Resources(luts=600, ffs=700, dsps=60, bram36=4), "control": Resources(luts=400, ffs=300)}
    monkeypatch.setattr(est, "estimate_by_engine",
                        lambda *a, **k: (Resources(luts=1000, ffs=1000, dsps=100, bram36=10, lutram=64), parts))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")        # no vivado
    assert main(["build", "--board", "pynq-z2", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[floor]    DSP blocks per engine" in out and "gemm 64, attention 64, conv 0; 128 of 220" in out
    assert "Vivado is not on PATH" in out and "vivado -mode batch -source sam2fpga_pynq_z2.tcl" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["estimate"]["dsps"] == 100 and report["vivado"].startswith("not run")
    assert report["estimate"]["by_engine"]["gemm"]["luts"] == 600
    assert "per engine" in out and "gemm             600      700     60       4     0       0" in out
    assert "dsps:       100 / 220       ( 45.5 %)\n" in out
    assert "luts:      1064 / 53200     (  2.0 %)  (1000 logic + 64 as memory)\n" in out
    dry_run((tmp_path / "sam2fpga_pynq_z2.tcl").read_text())


@pytest.mark.parametrize("argv, routes_at, exit_code", [([], 2, 0), ([], None, 1), (["--seed", "5"], 5, 0),
                                                     (["--seed", "1"], 2, 1)])
def test_ecp5_flow_tries_the_next_seed_where_one_does_not_route(argv, routes_at, exit_code, tmp_path, capsys,
                                                                 monkeypatch):
    """Without --seed the flow goes on to seeds 2 and 3 when router2 stalls; with --seed it tries that one only."""
    from hw.flows import ecp5

    tried = []

    def fake_build(core, name, out_dir, target_mhz, seed, **_):
        tried.append(seed)
        if seed != routes_at:
            raise ecp5.RoutingFailed(f"nextpnr does not route this design (seed {seed}): ...", "1 overused wire")
        return ecp5.Ecp5Report(out_dir / "top.bit", 52.8, target_mhz, {"MULT18X18D": (92, 156)}, "path")
    monkeypatch.setattr(ecp5, "build_ecp5", fake_build)
    assert main(["build", "--board", "ulx3s-85f", *argv, "-o", str(tmp_path)]) == exit_code
    out, err = capsys.readouterr()
    if argv:
        assert tried == [int(argv[1])]
    else:
        assert tried == ([1, 2] if routes_at else [1, 2, 3])
        assert "seed 1 does not route (1 overused wire): the next seed" in out
    if exit_code == 0:
        assert json.loads((tmp_path / "report.json").read_text())["seed"] == routes_at
    else:
        assert "does not route" in err and ("(seeds 1, 2, 3 tried)" in err) == (not argv)


@pytest.mark.slow(seconds=300)
def test_ecp5_open_flow_meets_the_small_preset_clock(tmp_path, capsys):
    """The whole open flow on the small ECP5 preset (GEMM + convolution; `ulx3s`, GEMM + attention,
    takes longer: its run is in bitstreams/README.md)."""
    assert main(["build", "--board", "ulx3s-85f", "--preset", ECP5_TIMED, "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fmax_mhz"] >= preset(ECP5_TIMED).clock_mhz
    assert report["utilisation"]["MULT18X18D"][0] > 0
    assert (tmp_path / "ecp5" / f"{TOP}.bit").stat().st_size > 100_000


def test_ecp5_presets_hold_the_engines():
    """Between them the two ECP5 presets place and route every array engine, on the same geometry."""
    default, timed = preset(DEFAULT_PRESET["ulx3s-85f"]), preset(ECP5_TIMED)
    assert set(default.engines) | set(timed.engines) == {"gemm", "attention", "conv"}
    assert timed == default.replace(name=timed.name, engines=timed.engines, clock_mhz=timed.clock_mhz)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_of_the_ecp5_preset_equals_sim_equals_golden():
    """The bitstream's geometry (2 x 8: four A entries per 64-bit beat) under AXI stalls."""
    import numpy as np

    from golden_model.intops import gemm
    from sw.backends.rtl import run_images
    from sw.runtime.driver import Driver
    cfg = preset("ulx3s")
    drv = Driver(cfg, "sim")
    rng = np.random.default_rng(5)
    progs, wants = [], []
    for m, k, n, relu, out_int32 in [(3, 37, 11, True, False), (5, 9, 16, False, True)]:
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        b = rng.integers(-128, 128, (k, n)).astype(np.int8)
        bias, mult, shift = rng.integers(-2**20, 2**20, n), rng.integers(1 << 29, 1 << 31, n), rng.integers(34, 44, n)
        p = drv.compile(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        want = gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        assert np.array_equal(p.output(drv.run(p)), want)
        progs.append(p), wants.append(want)
    results = run_images(cfg, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                    timeout=500_000) for p in progs], stall=0.3, seed=3)
    for p, want, r in zip(progs, wants, results):
        assert r["error"] == 0 and not r["timed_out"], r
        assert np.array_equal(p.output(r["image"]), want)


def _map_memories(tmp_path, name: str, family: str, memories) -> object:
    """yosys's cells for memories of one write port and one read port each, [(Memory, its shape)], alone."""
    from amaranth import Module
    from amaranth.back import verilog
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from hw.flows.estimate import count_cells, run_yosys

    ports = {}
    for i, (mem, shape) in enumerate(memories):
        ports |= {f"wa{i}": In(range(mem.depth)), f"we{i}": In(1), f"wd{i}": In(shape), f"ra{i}": In(range(mem.depth)),
                  f"re{i}": In(1), f"rd{i}": Out(shape)}

    class Mems(wiring.Component):
        def elaborate(self, platform):
            m = Module()
            for i, (mem, _) in enumerate(memories):
                m.submodules[f"mem{i}"] = mem
                w, r = mem.write_port(), mem.read_port()
                m.d.comb += [w.addr.eq(getattr(self, f"wa{i}")), w.en.eq(getattr(self, f"we{i}")),
                             w.data.eq(getattr(self, f"wd{i}")), r.addr.eq(getattr(self, f"ra{i}")),
                             r.en.eq(getattr(self, f"re{i}")), getattr(self, f"rd{i}").eq(r.data)]
            return m

    work = tmp_path / name
    work.mkdir()
    (work / "mems.v").write_text(verilog.convert(Mems(ports), name="mems"))
    return count_cells(run_yosys(work / "mems.v", "mems", family, work, abc9=False), "mems")


def test_o_banks_and_operand_scratchpads_map_to_ultraram_or_their_size_in_block_ram(tmp_path):
    """On yosys: kv260's attention O bank (attn_o_uram: one int40 lane, 768 deep) is one URAM288 and its A
    scratchpad (scratch_uram: 16 int8 = 128 bits wide) two (4,096 x 72 each: kv260's 4,096 entries too; 512
    here: the zero init of 4,096 took yosys about 15 s more); pynq-z2's O bank (block RAM,
    1,024 deep) 1.5 BRAM36, its data's size (at C lanes with a write enable each, a row took a 72-bit block
    RAM per lane: 20 BRAM36 at C = 32)."""
    from amaranth.lib import data
    from hw.attention.engine import OACC, o_bank_memory, o_banks
    from hw.gemm.array import INT8
    from hw.gemm.engine import operand_memory

    kv = preset("kv260")
    assert o_banks(preset("zcu104")) == (2, 1024) and o_banks(kv) == (2, 768) and kv.scratch_uram
    res = _map_memories(tmp_path, "kv260", "xcup", [(o_bank_memory(kv), OACC), (operand_memory(
        kv.replace(a_depth=512), "A"), data.ArrayLayout(INT8, kv.rows))])
    assert (res.uram, res.bram36, res.luts) == (1 + 2, 0, 0), res
    res = _map_memories(tmp_path, "pynq-z2", "xc7", [(o_bank_memory(preset("pynq-z2")), OACC)])
    assert (res.uram, res.bram36, res.luts) == (0, 1.5, 0), res
