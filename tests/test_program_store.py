"""sw/runtime/program_store.py: compiled programs kept on disk. A restored program is the compiled one (image,
descriptors, regions, symbolic list, op), a new executor on a filled store compiles nothing and gives the same
logits and cycles, anything that changes a program's arguments or the code misses, and a bad entry (truncated,
edited, a pickle) is refused with a warning and compiled again; no code of a file's runs."""
import copy
import dataclasses
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from hw.config import preset
from sw.compile.linear import compile_linear
from sw.runtime import program_store as ps
from sw.runtime.program import ColumnDescriptors, SplitDescriptors, link_words
from sw.runtime.program_store import ProgramStore, ProgramStoreWarning, decode, encode, store_from

from tests.conftest import SCALED_CLICK, scaled_quantised

CFG = preset("kv260")


def _segment(qm, runner, image):
    from golden_model.quant.predictor import GraphPredictor
    p = GraphPredictor(qm.graph, runner)
    p.set_image(image)
    return p.predict(point_coords=np.array([SCALED_CLICK], np.float32), point_labels=np.array([1]),
                     multimask_output=True, return_logits=True)


class _Recording(ProgramStore):
    """A store that keeps what it wrote: key -> the compiler's result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = {}

    def _save(self, key, result, compiler):
        self.results[key] = copy.deepcopy(result)      # as written (the compile cache then keeps its image lean)
        super()._save(key, result, compiler)


@pytest.fixture(scope="module")
def filled(scaled, tmp_path_factory):
    """The scaled model (128 px) segmented on an executor whose store was empty: (qm, store, logits, cycles a
    node, placements)."""
    from sw.runtime.overlay_segment import OverlayRunner
    qm = scaled_quantised(scaled, CFG)
    store = _Recording(tmp_path_factory.mktemp("programs"))
    ex = OverlayRunner(qm, CFG, "sim", program_store=store)
    logits = _segment(qm, ex, scaled[2])
    return qm, store, logits, {n: r.cycles for n, r in ex.records.items()}, ex.placements


def _same(a, b, path="") -> None:
    """a and b equal as trees: type for type, arrays by dtype, shape, bytes and writeability, objects by their
    attributes (but the descriptor lists' caches, made again on use)."""
    assert type(a) is type(b), path
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.flags.writeable == b.flags.writeable, path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
        if hasattr(a, "__dict__"):
            _same(vars(a), vars(b), path)
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        drop = ("_dicts", "_unaddressed")
        _same({k: v for k, v in vars(a).items() if k not in drop}, {k: v for k, v in vars(b).items() if k not in drop},
              path)
    else:
        assert a == b, path


def _programs(result):
    """The programs of a compiler's result: a program, compile_attention_calls' (head, q0, q1, program) tuples;
    none in place_all's placements."""
    if isinstance(result, list):
        return [p for *_, p in result] if all(isinstance(r, tuple) for r in result) else []
    return [result]


def test_every_program_kind_round_trips_byte_identical(filled):
    """Each entry the graph's run wrote decodes to its compiled result: image, descriptors, regions, symbolic list
    and its links, op, layouts; the kinds a 128 px image compiles are all there."""
    _, store, *_ = filled
    kinds = set()
    assert len(store.results) > 100 and store.stats.unstorable == 0
    for key, result in store.results.items():
        got = decode(store.path(key), key)
        _same(result, got)
        for want, prog in zip(_programs(result), _programs(got)):
            kinds.add(type(prog).__name__)
            assert isinstance(prog.symbolic, (ColumnDescriptors, SplitDescriptors))
            addresses = {r: 0x1000_0000 + i * 0x10_0000 for i, r in enumerate(want.regions)}
            assert link_words(prog.symbolic, addresses).tobytes() == link_words(want.symbolic, addresses).tobytes()
            assert list(prog.descriptors) == list(want.descriptors)
    assert kinds >= {"Program", "VectorProgram", "AttentionProgram", "ConvProgram"}


def test_layout_programs_and_split_descriptors_round_trip():
    """The kinds the graph's 128 px run does not make: the relayouts, a depthwise program (its multipliers set on
    the instance), a program with its own roles (a vector or attention program reading segments), a
    SplitDescriptors list; shared objects stay shared, the program image's read-only flag stays."""
    from sw.runtime.layout import compile_chunks_to_planar, compile_planar_to_rows, compile_rows_to_planar
    for prog in (compile_rows_to_planar(CFG, 64, 8, 8), compile_planar_to_rows(CFG, 64, 8, 8, order=4),
                 compile_chunks_to_planar(CFG, 128, 2, 32, heads=2)):
        got = decode(io.BytesIO(encode(prog, "k")), "k")
        _same(prog, got)
        assert got.descriptors.split[0]["opcode"] is got.symbolic.split[0]["opcode"] or \
            prog.descriptors.split[0]["opcode"] is not prog.symbolic.split[0]["opcode"]
    from sw.compile.conv import compile_depthwise
    rng = np.random.default_rng(0)
    dw = compile_depthwise(CFG, np.zeros((32, 8, 8), np.int8), rng.integers(-9, 9, (32, 1, 3, 3), dtype=np.int8),
                           None, np.full(32, 1 << 14), np.full(32, 20), padding=1)
    assert "array_macs" in vars(dw)                     # set on the instance: kept
    own_roles = compile_linear(*_linear_args())
    own_roles.ROLES = {**own_roles.ROLES, "A": "weight"}
    for prog in (dw, own_roles):
        _same(prog, decode(io.BytesIO(encode(prog, "k")), "k"))
    split = SplitDescriptors.of([dict(opcode=1, dram_addr=("A", 64), count=2), dict(opcode=2, dram_addr=("B", 0))])
    got = decode(io.BytesIO(encode(split, "k")), "k")
    _same(split, got)
    addresses = {"A": 1 << 20, "B": 2 << 20}
    assert link_words(got, addresses).tobytes() == link_words(split, addresses).tobytes()


def test_a_new_executor_on_the_store_compiles_nothing(filled, scaled):
    """A second executor (a new process's) on the filled store loads every program and its placement (whose
    pricing compiles programs too): no compile, the same placements, logits bit for bit and modelled cycles node
    by node. Its arena is bigger, as a video session's (the memory bank too): the DDR a program may take is a
    limit, not part of an entry's key."""
    from sw.runtime.overlay_segment import OVERLAY_DDR_BYTES, OverlayRunner
    qm, first, logits, cycles, placements = filled
    store = ProgramStore(first.dir)
    ex = OverlayRunner(qm, CFG, "sim", program_store=store, ddr_bytes=OVERLAY_DDR_BYTES + (96 << 20))
    assert store.stats.hits == 1 and ex.placements == placements
    got = _segment(qm, ex, scaled[2])
    assert store.stats.compiled == 0 and store.stats.hits == ex.driver.compiles.misses + 1 > 100
    assert all(np.array_equal(a, b) for a, b in zip(got, logits))
    assert {n: r.cycles for n, r in ex.records.items()} == cycles


def _linear_args(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (40, 48), dtype=np.int8)
    b = rng.integers(-128, 128, (48, 40), dtype=np.int8)
    return (CFG, a, b, rng.integers(-999, 999, 40), np.full(40, 1 << 14), np.full(40, 20))


def test_different_arguments_or_code_are_different_entries(tmp_path, monkeypatch):
    """One changed weight byte, a keyword, another fingerprint of the code: another entry, whose program is that
    call's (a store that returned the first would fail here)."""
    store = ProgramStore(tmp_path)
    args = _linear_args()
    other = list(args)
    other[2] = args[2].copy()
    other[2][3, 5] ^= 1
    first = store.compile(compile_linear, args, {})
    second = store.compile(compile_linear, tuple(other), {})
    relu = store.compile(compile_linear, args, {"relu": True})
    assert store.stats.compiled == 3 and store.stats.written == 3 and len(store.entries()) == 3
    _same(second, compile_linear(*other))
    assert first.image.tobytes() != second.image.tobytes() and _differ(first, relu)
    again = ProgramStore(tmp_path)
    _same(again.compile(compile_linear, tuple(other), {}), second)
    _same(again.compile(compile_linear, args, {"relu": True}), relu)
    assert again.stats.hits == 2 and again.stats.compiled == 0
    key = again.key(compile_linear, args, {})
    keys = {again.key(compile_linear, (v,), {}) for v in (1.5, np.float64(1.5), 1, np.int64(1), True, (1, 2), [1, 2])}
    assert len(keys) == 7                     # equal values of other types are other arguments
    monkeypatch.setattr(ps, "code_fingerprint", lambda: "another version of the compilers")
    assert again.key(compile_linear, args, {}) != key is not None
    again.compile(compile_linear, args, {})
    assert again.stats.compiled == 1


def test_the_ddr_bound_is_a_limit_not_a_key(tmp_path):
    """A program stored under one DDR bound is loaded under any bound it fits (the same program a compile there
    makes); under one it does not fit, the compiler runs and refuses it as it would without a store."""
    from sw.compile.linear import CompileError
    args = _linear_args()
    stored = ProgramStore(tmp_path).compile(compile_linear, args, {"max_ddr_bytes": 1 << 30})
    need = stored.image.nbytes
    store = ProgramStore(tmp_path)
    _same(store.compile(compile_linear, args, {"max_ddr_bytes": need}), compile_linear(*args, max_ddr_bytes=need))
    assert store.stats.hits == 1 and store.stats.compiled == 0
    with pytest.raises(CompileError, match=f"needs {need} bytes of DDR, more than the {need - 1} allowed"):
        store.compile(compile_linear, args, {"max_ddr_bytes": need - 1})
    assert store.stats.hits == 1 and store.stats.compiled == 0 and len(store.entries()) == 1     # (nothing made)
    calls = [(0, 0, 8, stored), (1, 0, 8, stored)]          # compile_attention_calls' kind of result
    assert ps._fits(calls, need) and not ps._fits(calls, need - 1) and ps._fits(calls, None)


def _differ(a, b) -> bool:
    try:
        _same(a, b)
    except AssertionError:
        return True
    return False


def test_the_code_fingerprint_follows_the_source(tmp_path, monkeypatch):
    (tmp_path / "sw").mkdir()
    src = tmp_path / "sw" / "compiler.py"
    src.write_text("X = 1\n")
    monkeypatch.setattr(ps, "_package_dirs", lambda: [tmp_path / "sw"])
    before = ps.code_fingerprint.__wrapped__()
    src.write_text("X = 2\n")
    assert ps.code_fingerprint.__wrapped__() != before


def test_what_it_cannot_key_or_encode_is_compiled_not_stored(tmp_path):
    store = ProgramStore(tmp_path)
    args = _linear_args()
    for compiler in (lambda *a: compile_linear(*a), compile_linear.__get__(object())):    # a closure, a method
        assert store.key(compiler, args, {}) is None
    assert store.key(_linear, args, {}) is None         # a function outside the fingerprinted packages
    store.compile(lambda *a: compile_linear(*a), args, {})
    assert store.key(compile_linear, args + (object(),), {}) is None           # an argument it cannot encode
    with pytest.warns(ProgramStoreWarning, match="not stored"):
        store.compile(ps.default_dir, (), {})                                  # a result it cannot encode (a Path)
    assert store.stats.compiled == 2 and store.stats.written == 0 and not store.entries()


def _linear(*args):
    return compile_linear(*args)


def _corrupt(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "pickle":
        path.write_bytes(pickle.dumps(_Boom(str(path) + ".ran")))
    elif how == "byte":                              # one byte of an array's data changed: its CRC
        data = bytearray(data)
        data[len(data) // 2] ^= 0x40
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {n: z.read(n) for n in z.namelist()}
        tree = np.load(io.BytesIO(members["tree.npy"]), allow_pickle=False)
        header = json.loads(tree.tobytes())
        if how == "object":                          # a pool member that is a pickled object array
            buf = io.BytesIO()
            np.save(buf, np.array([_Boom(str(path) + ".ran")], object), allow_pickle=True)
            members[next(n for n in members if n != "tree.npy")] = buf.getvalue()
        elif how == "class":
            header["tree"]["cls"] = "os.system"
        elif how == "format":
            header["format"] = ps.FORMAT + 1
        else:                                        # an attribute ALLOWED does not name for the class
            header["tree"]["f"]["__class__"] = None
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(header).encode(), np.uint8))
        members["tree.npy"] = buf.getvalue()
        with zipfile.ZipFile(path, "w") as z:
            for n, b in members.items():
                z.writestr(n, b)


class _Boom:
    """Unpickling it would write a file: what a loader that unpickles would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("how", ["truncated", "pickle", "byte", "object", "class", "format", "attribute"])
def test_a_bad_entry_is_refused_with_a_warning_and_compiled_again(tmp_path, how):
    store = ProgramStore(tmp_path)
    args = _linear_args()
    want = store.compile(compile_linear, args, {})
    (path,) = [p for *_, p in store.entries()]
    _corrupt(path, how)
    again = ProgramStore(tmp_path)
    with pytest.warns(ProgramStoreWarning, match="does not decode"):
        got = again.compile(compile_linear, args, {})
    _same(got, want)
    assert again.stats.bad == 1 and again.stats.compiled == 1 and again.stats.written == 1
    assert not os.path.exists(str(path) + ".ran")
    _same(decode(path, path.stem), want)                      # replaced by a good one
    assert ProgramStore(tmp_path).compile(compile_linear, args, {}) is not None


def test_the_budget_drops_the_least_recently_used(tmp_path):
    store = ProgramStore(tmp_path)
    for seed in range(4):
        store.compile(compile_linear, _linear_args(seed), {})
    sizes = [size for _, size, _ in store.entries()]
    oldest = store.entries()[0][2]
    os.utime(oldest, (1, 1))
    store.compile(compile_linear, _linear_args(1), {})           # a hit: now the most recently used
    small = ProgramStore(tmp_path, budget=int(sum(sizes) * 0.8))
    small.compile(compile_linear, _linear_args(9), {})
    assert small.size() <= small.budget and small.stats.evicted >= 1
    assert (tmp_path / f"{small.key(compile_linear, _linear_args(9), {})}.npz").exists()


def test_where_the_cli_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ps.default_dir() == tmp_path / "xdg" / "sam2fpga" / "programs"
    monkeypatch.delenv(ps.STORE_ENV, raising=False)
    assert store_from().dir == tmp_path / "xdg" / "sam2fpga" / "programs"
    monkeypatch.setenv(ps.STORE_ENV, str(tmp_path / "env"))
    assert store_from().dir == tmp_path / "env"
    assert store_from(tmp_path / "flag").dir == tmp_path / "flag"
    assert store_from("off") is None
    monkeypatch.setenv(ps.STORE_ENV, "off")
    assert store_from() is None
    monkeypatch.setenv(ps.BUDGET_ENV, "12")
    assert ProgramStore(tmp_path).budget == 12 << 20
    monkeypatch.setenv(ps.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="SAM2FPGA_PROGRAM_STORE_MB"):
        ProgramStore(tmp_path)


def test_program_store_flag_needs_a_backend(tmp_path, capsys, monkeypatch):
    from sw.cli import main
    image = tmp_path / "in.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as e:             # a usage error: argparse exits 2
        main(["segment", str(image), "--point", "1,1", "-o", str(tmp_path / "o.png"),
              "--program-store", str(tmp_path / "programs")])
    assert e.value.code == 2 and "--program-store is for --backend" in capsys.readouterr().err
    assert not (tmp_path / "programs").exists()
    monkeypatch.setenv(ps.BUDGET_ENV, "2G")
    with pytest.raises(SystemExit) as e:
        main(["segment", str(image), "--point", "1,1", "-o", str(tmp_path / "o.png"), "--backend", "sim"])
    assert e.value.code == 2 and "SAM2FPGA_PROGRAM_STORE_MB='2G'" in capsys.readouterr().err


def test_allowed_names_the_attributes_of_its_classes():
    """Every class on ALLOWED is a dataclass whose fields it lists, or one of the descriptor lists."""
    for name, (cls, attrs, _, _) in ps._classes().items():
        assert f"{cls.__module__}.{cls.__qualname__}" == name
        if dataclasses.is_dataclass(cls):
            assert attrs == tuple(f.name for f in dataclasses.fields(cls))


def test_a_failed_write_leaves_no_entry_and_the_run_goes_on(tmp_path, monkeypatch):
    """A write that fails half way (here NumPy's) leaves neither an entry nor its temporary file; a directory it
    cannot write (a file in its way) turns writing off with one warning; the program is returned either way."""
    args = _linear_args()
    store = ProgramStore(tmp_path / "programs")
    real = np.savez

    def half(f, **arrays):
        f.write(b"PK\x03\x04 half an entry")
        raise RuntimeError("killed")
    monkeypatch.setattr(np, "savez", half)
    with pytest.warns(ProgramStoreWarning, match="not stored"):
        _same(store.compile(compile_linear, args, {}), compile_linear(*args))
    assert os.listdir(tmp_path / "programs") == []
    monkeypatch.setattr(np, "savez", real)
    (tmp_path / "file").write_text("")
    blocked = ProgramStore(tmp_path / "file" / "programs")
    with pytest.warns(ProgramStoreWarning, match="cannot write"):
        _same(blocked.compile(compile_linear, args, {}), compile_linear(*args))
    blocked.compile(compile_linear, _linear_args(1), {})           # (no second warning: writing is off)
    assert blocked.stats.written == 0 and blocked.stats.compiled == 2


def test_the_background_writer_writes_what_compile_returned(tmp_path, monkeypatch):
    """A background store (the CLI's) writes the entry a store writing before compile() returns writes, though
    the compile cache makes the program's image lean and read-only before the writer encodes it; flush waits."""
    import threading

    from sw.runtime.compile_cache import _keep_images
    args = (CFG, np.zeros((4096, 48), np.int8), *_linear_args()[2:])       # (an image mostly input/output space)
    sync, bg = ProgramStore(tmp_path / "sync"), ProgramStore(tmp_path / "bg", background=True)
    sync.compile(compile_linear, args, {})
    go, save = threading.Event(), bg._save
    monkeypatch.setattr(bg, "_save", lambda *entry: (go.wait(30), save(*entry)))
    prog = bg.compile(compile_linear, args, {})
    image = prog.image
    _keep_images(prog)                                  # what CompileCache.get does with it next
    assert prog.image is not image and not prog.image.flags.writeable
    assert bg.stats.written == 0 and not bg.entries()   # (still queued)
    go.set()
    bg.flush()
    key = bg.key(compile_linear, args, {})
    assert bg.stats.written == 1 and bg.path(key).read_bytes() == sync.path(key).read_bytes()
    _same(ProgramStore(tmp_path / "bg").compile(compile_linear, args, {}), compile_linear(*args))


def test_a_loaded_image_is_lean_as_the_compile_cache_keeps_it(tmp_path):
    """A stored image's zero blocks are never written on loading: it comes back in the compile cache's kind of
    mapping, holding its non-zero pages, which the cache then keeps as it is (no second pass over it)."""
    from sw.runtime import compile_cache as CC
    args = (CFG, np.zeros((4096, 48), np.int8), *_linear_args()[2:])
    want = compile_linear(*args)
    ProgramStore(tmp_path).compile(compile_linear, args, {})
    got = ProgramStore(tmp_path).compile(compile_linear, args, {})
    page = CC.mmap.PAGESIZE
    pages = -(-want.image.nbytes // page)
    raw = np.pad(want.image.reshape(-1).view(np.uint8), (0, pages * page - want.image.nbytes))
    held = int(raw.reshape(pages, page).any(axis=1).sum()) * page
    assert CC._lean_held(got.image) == held < want.image.nbytes // 4 and got.image.flags.writeable
    image = got.image
    assert CC._keep_images(got) == held and got.image is image and not image.flags.writeable
    assert np.array_equal(image, want.image)


def test_a_new_process_takes_the_cycle_models_outcomes_from_the_store(scaled, tmp_path, monkeypatch):
    """Driver.close saves what the cycle model timed (a JSON file beside the entries), a new driver on the store
    takes it: a new process's session runs no recurrence for the programs it loads, and its cycles are the same
    node by node. A bad file is warned about, removed, and the run times its programs itself."""
    from sw.backends import cycles
    from sw.runtime.overlay_segment import OverlayRunner
    qm = scaled_quantised(scaled, CFG)

    def session():
        ex = OverlayRunner(qm, CFG, "sim", program_store=ProgramStore(tmp_path))
        _segment(qm, ex, scaled[2])
        ex.driver.close()
        return {n: r.cycles for n, r in ex.records.items()}

    want = session()
    (path,) = tmp_path.glob("timings-*.json")
    runs, simulate = [], cycles._simulate
    monkeypatch.setattr(cycles, "_simulate", lambda *a: runs.append(1) or simulate(*a))
    cycles.forget_timings()                         # (a new process remembers nothing)
    assert session() == want and not runs
    path.write_text('{"format": %d, "rows": [["00", true, [[null, "done", -1, 0, null, 0, 0, null]]]]}' % ps.FORMAT)
    cycles.forget_timings()
    with pytest.warns(ProgramStoreWarning, match="ignoring .*timings"):
        assert session() == want
    assert runs and path.exists()                   # (timed again, saved anew)


def test_entries_are_read_through_one_buffer_nothing_keeps(tmp_path, monkeypatch):
    """A store reads its entries into one buffer, again and again (no fresh memory an entry), and a program it
    loaded is not changed by reading the next; were a decoded array still to view the buffer, the store leaves
    the buffer to it and reads the next entry into a new one."""
    first, second = _linear_args(0), _linear_args(1)
    store = ProgramStore(tmp_path)
    want = [store.compile(compile_linear, args, {}) for args in (first, second)]
    again = ProgramStore(tmp_path)
    got = [again.compile(compile_linear, first, {})]
    buffer = again._buffer
    got.append(again.compile(compile_linear, second, {}))
    assert again._buffer is buffer is not None and again.stats.hits == 2
    for g, w in zip(got, want):
        _same(g, w)
    kept, decode_ = [], ps.decode

    def keeping(data, key):                         # a decoder that keeps a view of what it read
        kept.append(np.frombuffer(data, np.uint8))
        return decode_(data, key)
    monkeypatch.setattr(ps, "decode", keeping)
    third = ProgramStore(tmp_path)
    third.compile(compile_linear, first, {})
    assert third._buffer is None
    held = kept[0].copy()
    third.compile(compile_linear, second, {})
    assert np.array_equal(kept[0], held) and third.stats.hits == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / f"{third.key(compile_linear, first, {})}.npz").write_bytes(b"")    # (a zero-byte entry first)
    with pytest.warns(ProgramStoreWarning, match="does not decode"):
        ProgramStore(empty).compile(compile_linear, first, {})
