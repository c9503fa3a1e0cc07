"""`sam2fpga segment --backend`: the scaled-down tiny SAM 2 (tests/conftest.py, 128 px) on the overlay gives
the `--precision int8` host reference's logits bit for bit, on the sim backend and through the real pynq
library on the simulated device (one session); bad input is a one-line error."""
import re

import numpy as np
import pytest
from PIL import Image

from golden_model.quant.qfile import save_quantised
from hw.config import preset
from sw.cli import main

from tests.conftest import SCALED_CLICK, scaled_quantised

POINT = "{:g},{:g}".format(*SCALED_CLICK)


@pytest.fixture(scope="module")
def files(scaled, tmp_path_factory):
    """The image as PNG, the model quantised for kv260 (segment's default preset), the host int8 logits."""
    d = tmp_path_factory.mktemp("segment_overlay")
    image, model = d / "in.png", d / "tiny128.kv260.safetensors"
    Image.fromarray(scaled[2]).save(image)
    save_quantised(scaled_quantised(scaled, preset("kv260")), model)
    host = d / "host.npy"
    assert main(["segment", str(image), "--point", POINT, "--precision", "int8", "--quantised", str(model),
                 "-o", str(d / "host.png"), "--logits-out", str(host)]) == 0
    return image, model, host


def _segment(files, tmp_path, *argv):
    image, model, _ = files
    out = tmp_path / "logits.npy"
    code = main(["segment", str(image), "--point", POINT, "--quantised", str(model), "-o", str(tmp_path / "o.png"),
                 "--logits-out", str(out), *argv])
    return code, out


def test_sim_backend_equals_host_int8(files, tmp_path, capsys):
    code, out = _segment(files, tmp_path, "--backend", "sim", "--nodes")
    assert code == 0
    assert out.read_bytes() == files[2].read_bytes()
    stdout, stderr = capsys.readouterr()
    assert re.search(r"nodes on .*vector \d+", stdout)      # kv260's vector engine takes the element-wise nodes
    assert "image encoder" in stdout and "prompt + decoder" in stdout and "at kv260's 300 MHz" in stdout
    assert "patch_embed" in stdout                          # --nodes: the per-node table
    assert "image_encoder: 183/183 nodes" in stderr        # progress


def test_pynq_backend_one_session_equals_host_int8(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("pynq")
    import sw.runtime.driver as driver
    opened = []
    real = driver.open_backend
    monkeypatch.setattr(driver, "open_backend", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    code, out = _segment(files, tmp_path, "--backend", "pynq")
    assert code == 0 and opened == ["pynq"]
    assert out.read_bytes() == files[2].read_bytes()


@pytest.mark.parametrize("argv,code,needle", [
    (["--backend", "sim", "--precision", "float"], 2, "drop --precision float"),
    (["--nodes"], 2, "--nodes needs --backend"),
    (["--backend", "sim", "--preset", "nope"], 2, "unknown preset 'nope'"),
    (["--backend", "sim", "--preset", "bench16"], 1, "quantised for preset 'kv260'"),
    (["--backend", "pynq", "--bitfile", "/no/such.bit"], 2, "/no/such.bit: no such file"),
])
def test_bad_input_is_a_one_line_error(files, tmp_path, capsys, argv, code, needle):
    try:
        got = _segment(files, tmp_path, *argv)[0]
    except SystemExit as e:                     # usage errors: argparse exits 2
        got = e.code
    assert got == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_arena_too_small_is_a_clear_error(files, tmp_path, capsys, monkeypatch):
    import sw.runtime.overlay_segment as overlay
    monkeypatch.setattr(overlay, "OVERLAY_DDR_BYTES", 3 << 20)
    assert _segment(files, tmp_path, "--backend", "sim")[0] == 1
    err = capsys.readouterr().err
    assert "bytes" in err and "Traceback" not in err


def test_nodes_of_a_missing_engine_are_said_to_run_on_the_host(scaled):
    """A preset without an engine the graph wants: its nodes go to the host, and segment says how many."""
    from sw.runtime.overlay_segment import OverlayRunner, missing_engines
    cfg = preset("kv260")
    no_vector = cfg.replace(engines=tuple(e for e in cfg.engines if e != "vector"))
    ex = OverlayRunner(scaled_quantised(scaled, cfg), no_vector, "sim")
    for node in ex.graph.nodes:                # the records missing_engines reads, without running anything
        ex.op_fn(node)
    lines = missing_engines(ex)
    assert len(lines) == 1 and re.fullmatch(r"no vector engine: \d+ nodes run on the host", lines[0])


@pytest.mark.parametrize("budget_mb", [None, 16])
def test_a_sessions_second_image_reuses_its_programs(scaled, budget_mb):
    """Two images on one executor (one driver session): the second compiles only the nodes whose compiler
    arguments hold the image's own data (host-fed inputs), and both equal the host int8 bit for bit. With a
    compile cache too small for the image's programs (16 MiB of ~37), the programs it keeps are its nodes'
    latest and all used again: dropping the least recently used would drop each before its next use, and the
    second image would compile them all again (bit-exactness left to the first case: the same programs)."""
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    from sw.runtime.overlay_segment import OverlayRunner
    qm = scaled_quantised(scaled, preset("kv260"))
    ex = OverlayRunner(qm, preset("kv260"), "sim")
    cache = ex.driver.compiles
    if budget_mb is not None:
        cache.budget = budget_mb << 20

    def segment(runner, image):
        p = GraphPredictor(qm.graph, runner)
        p.set_image(image)
        return p.predict(point_coords=np.array([SCALED_CLICK], np.float32), point_labels=np.array([1]),
                         multimask_output=True, return_logits=True)
    second = np.random.default_rng(1).integers(0, 256, scaled[2].shape, dtype=np.uint8)
    for i, image in enumerate([scaled[2], second]):
        hits, misses = cache.hits, cache.misses
        got = segment(ex, image)
        if budget_mb is None:
            assert all(np.array_equal(a, b) for a, b in zip(got, segment(IntRunner(qm), image)))
        if i == 0:
            compiled, kept = cache.misses - misses, len(cache._kept)
            assert cache.hits == hits and compiled > 100
        elif budget_mb is None:
            assert cache.hits - hits >= compiled - 5 and cache.misses - misses <= 5
        else:
            assert cache.used <= cache.budget and 50 < kept < compiled - 50     # a part kept
            assert cache.hits - hits >= kept - 5


def test_a_sessions_next_image_links_and_checks_nothing(scaled):
    """Two photos in one OverlayRunner session: the second's programs are all still loaded (the arena holds a
    session's programs and an image's activations) and its activations sit where the first's did (the buffers kept
    for the session, planes, padded windows, constants, the mask product's B, are placed with the programs at
    the arena's top), so it loads, links and checks no descriptor list, writes none, and equals the host's."""
    from benchmarks.overlay_segment import _segment as segment
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    from sw.runtime.overlay_segment import OverlayRunner
    qm = scaled_quantised(scaled, preset("kv260"))
    ex = OverlayRunner(qm, preset("kv260"), "sim")
    other = np.random.default_rng(7).integers(0, 256, scaled[2].shape, dtype=np.uint8)
    segment(GraphPredictor(qm.graph, ex), scaled[2], SCALED_CLICK)
    session, drv = ex.driver.session, ex.driver
    before = session.links, session.checks, session.relinks, drv.program_bytes, len(drv._cache)
    got = segment(GraphPredictor(qm.graph, ex), other, SCALED_CLICK)
    assert (session.links, session.checks, session.relinks, drv.program_bytes, len(drv._cache)) == before
    want = segment(GraphPredictor(qm.graph, IntRunner(qm)), other, SCALED_CLICK)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_a_second_command_loads_its_programs_from_the_program_store(files, tmp_path, capsys):
    """`--program-store DIR`: the first command compiles and stores its programs (and the placement), the next
    one loads them all, compiles none, and both give the host int8 logits bit for bit."""
    store = tmp_path / "programs"
    for run in range(2):
        code, out = _segment(files, tmp_path, "--backend", "sim", "--program-store", str(store))
        assert code == 0 and out.read_bytes() == files[2].read_bytes()
        line = next(x for x in capsys.readouterr().out.splitlines() if "program store" in x)
        loaded, compiled = map(int, re.search(r"(\d+) loaded .* (\d+) compiled", line).groups())
        # (the first: a few programs equal to one compiled earlier in the same run, loaded)
        assert (compiled > 100 and loaded < 20) if run == 0 else (loaded > 100 and compiled == 0), line
    assert len(list(store.glob("*.npz"))) > 100


def test_rtl_says_how_long_it_takes_before_it_starts(files, tmp_path, capsys, monkeypatch):
    """`--backend rtl` on a full-size model runs for hours: segment first says how long (the placement's modelled
    cycles of the image and click at Verilator's rate here). The rtl backend stands in as sim here (the real rtl
    runs: tests/test_rtl_sam2.py)."""
    import sw.backends.rtl as rtl
    import sw.runtime.overlay_segment as overlay_segment
    made = []

    class SimForRtl(overlay_segment.OverlayRunner):
        def __init__(self, qm, cfg, backend="sim", **kwargs):
            made.append(self)
            super().__init__(qm, cfg, "sim" if backend == "rtl" else backend, **kwargs)
    monkeypatch.setattr(overlay_segment, "OverlayRunner", SimForRtl)
    code, out = _segment(files, tmp_path, "--backend", "rtl")
    assert code == 0 and out.read_bytes() == files[2].read_bytes()
    err = capsys.readouterr().err
    ex = made[0]
    cycles = sum(ex.placements[n.name].cycles for n in ex.graph.nodes
                 if n.stage in ("image_encoder", "prompt_encoder", "mask_decoder"))
    assert cycles > 0 and f"segment: rtl: about {cycles:,} overlay cycles" in err
    assert err.index("rtl: about") < err.index("image_encoder: ")          # before the run's progress
    monkeypatch.setattr(rtl, "CYCLES_PER_S", 1)
    assert f"about {cycles / 3600:.1f} hours" in overlay_segment.rtl_forecast(ex)
