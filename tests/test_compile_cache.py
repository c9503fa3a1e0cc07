"""sw.runtime.compile_cache: a node's program used again only while its compiler's arguments are equal, by value."""
import numpy as np
import pytest

from golden_model.intvec import LayerNormParams, LutParams
from hw.config import preset
from sw.runtime import compile_cache as CC
from sw.runtime.compile_cache import CompileCache
from sw.runtime.layout import RowRuns


class Compiler:
    """Counts its calls; its 'program' a fresh object holding an image."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return type("Prog", (), {"image": np.zeros(64, np.uint8)})()


def test_equal_arguments_reuse_the_program_anything_else_compiles():
    cache, make = CompileCache(), Compiler()
    cfg = preset("kv260")
    x = np.zeros((4, 8), np.int8)
    w = np.arange(32, dtype=np.int8).reshape(8, 4)

    def layernorm(shift=8):
        return LayerNormParams(np.ones(8, np.int16), np.zeros(8, np.int32), shift, 3)
    ln = layernorm()
    args = dict(segments={"in": (4,)}, runs={"out": RowRuns.windows(4, 4, 2)},
                lut=LutParams((np.arange(256) - 128).astype(np.int8)))
    p = cache.get("n", make, cfg, x, w, ln, relu=True, **args)
    # equal by value (new arrays, new parameter objects): the same program
    assert cache.get("n", make, cfg, x.copy(), w.copy(), layernorm(), relu=True, **args) is p
    assert make.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    changed = [((cfg, x, w.copy(), ln), dict(relu=False, **args)),                           # a flag
               ((cfg, x + 1, w, ln), dict(relu=True, **args)),                               # data, not zeros
               ((cfg, x.astype(np.int16), w, ln), dict(relu=True, **args)),                  # a dtype
               ((cfg, x.reshape(8, 4), w, ln), dict(relu=True, **args)),                     # a shape
               ((cfg, x, w, layernorm(9)), dict(relu=True, **args)),                         # a parameter
               ((preset("bench16"), x, w, ln), dict(relu=True, **args)),                     # another overlay
               ((cfg, x, w, ln), dict(relu=True, **{**args, "runs": {"out": RowRuns.windows(4, 4, 4)}})),
               ((cfg, x, w, ln), dict(relu=True, **{**args, "lut": LutParams((127 - np.arange(256)).astype(np.int8))})),
               ((cfg, x, w, ln), dict(relu=1, **args))]                                       # 1 is not True
    for a, kw in changed:
        assert cache.get("n", make, *a, **kw) is not p
    assert make.calls == 1 + len(changed)
    # another owner compiles its own; an argument changed in place is a new argument
    assert cache.get("m", make, cfg, x, w, ln, relu=True, **args) is not p
    w[0, 0] = 99
    before = make.calls
    cache.get("m", make, cfg, x, w, ln, relu=True, **args)
    assert make.calls == before + 1


def test_an_owner_keeps_its_last_calls_and_the_budget_bounds_all():
    cache, make = CompileCache(budget=10_000), Compiler()
    progs = [cache.get("n", make, np.full(100, i, np.int8)) for i in range(CC.PER_NODE + 1)]
    assert make.calls == CC.PER_NODE + 1
    assert cache.get("n", make, np.full(100, CC.PER_NODE, np.int8)) is progs[-1]        # kept
    cache.get("n", make, np.full(100, 0, np.int8))                                       # the oldest: dropped
    assert make.calls == CC.PER_NODE + 2
    cache.get("big", make, np.ones(20_000, np.int8))                                   # over the budget: not kept
    cache.get("big", make, np.ones(20_000, np.int8))
    assert make.calls == CC.PER_NODE + 4 and cache.used <= cache.budget
    for i in range(100):                                                                 # many owners: the budget holds
        cache.get(f"o{i}", make, np.ones(500, np.int8))
    assert cache.used <= cache.budget


def test_arguments_it_cannot_compare_are_never_kept():
    cache, make = CompileCache(), Compiler()
    thing = object()
    cache.get("n", make, thing)
    cache.get("n", make, thing)
    assert make.calls == 2


@pytest.mark.parametrize("bad", [{1, 2}, lambda: 0])
def test_snap_refuses_what_it_cannot_compare(bad):
    with pytest.raises(TypeError):
        CC._snap(bad)


def test_programs_in_a_list_of_calls_count_against_the_budget():
    """compile_attention_calls' result, (head, q0, q1, program) tuples: their images are what the entry holds."""
    def calls(n):
        return [(h, 0, 4, type("Prog", (), {"image": np.zeros(1000, np.uint8)})()) for h in range(n)]
    cache = CompileCache(budget=1500)
    cache.get("two", calls, 2)                  # 2,000 bytes of images: over the budget, not kept
    assert cache.used == 0
    cache.get("one", calls, 1)
    assert cache.used == 1000


def test_the_budget_follows_its_environment_variable(monkeypatch):
    monkeypatch.setenv(CC.BUDGET_ENV, "0")
    cache = CC.CompileCache()
    assert cache.budget == 0
    calls = []
    compiler = lambda x: calls.append(x) or x      # noqa: E731
    cache.get("n", compiler, 1), cache.get("n", compiler, 1)
    assert calls == [1, 1]                        # a budget of 0 keeps nothing
    monkeypatch.setenv(CC.BUDGET_ENV, "12")
    assert CC.CompileCache().budget == 12 << 20
    monkeypatch.setenv(CC.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="SAM2FPGA_COMPILE_CACHE_MB"):
        CC.CompileCache()


def test_read_only_arrays_with_read_only_owners_are_kept_as_themselves():
    cache, make = CompileCache(), Compiler()
    w = np.arange(64, dtype=np.int8).reshape(8, 8).copy()
    CC.freeze([w])
    with pytest.raises(ValueError):                     # frozen: written by no one
        w[0, 0] = 1
    p = cache.get("n", make, w.reshape(4, 16), CC.zeros((4, 8)))
    assert cache.used == 64                             # the program's image only: no copies of w or the zeros
    assert CC.zeros((4, 8)) is CC.zeros((4, 8)) and not CC.zeros((4, 8)).flags.writeable
    assert cache.get("n", make, w.reshape(4, 16), CC.zeros((4, 8))) is p          # the same memory: a hit
    assert cache.get("n", make, w.copy().reshape(4, 16), np.zeros((4, 8), np.int8)) is p   # equal values: a hit
    other = np.arange(64, dtype=np.int8)[::-1].copy()
    CC.freeze([other])
    assert cache.get("n", make, other.reshape(4, 16), CC.zeros((4, 8))) is not p   # other values: compiled
    shifted = np.concatenate([w.reshape(-1), w.reshape(-1)])[1:65]                  # the same shape elsewhere
    assert cache.get("n", make, shifted.reshape(4, 16), CC.zeros((4, 8))) is not p
    # a read-only view of a writeable array is compared by value: its owner may change it
    live = np.arange(64, dtype=np.int8)
    view = live.reshape(4, 16)
    view.flags.writeable = False
    q = cache.get("m", make, view)
    live[0] = 5
    assert cache.get("m", make, view) is not q
    assert make.calls == 5


def test_a_kept_programs_zero_pages_count_for_nothing():
    """A linear whose input is read in place (compiled on zeros) and whose output goes to another buffer: its
    image's A and out regions are zeros, kept unwritten (they hold no memory) and not counted against the
    budget; the kept image is the compiled one byte for byte, and read-only (a kept program never changes)."""
    from sw.compile.linear import compile_linear
    cfg = preset("kv260")
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (64, 64), dtype=np.int8)
    args = (cfg, CC.zeros((4096, 64)), w, np.zeros(64, np.int32), np.full(64, 1 << 14, np.int32),
            np.full(64, 20, np.int32))
    CC.freeze(args[2:])                                 # a model's: kept as themselves, no copies
    cache = CompileCache()
    kept, fresh = cache.get("n", compile_linear, *args), compile_linear(*args)
    assert np.array_equal(kept.image, fresh.image) and not kept.image.flags.writeable
    pages = -(-fresh.image.size // CC.mmap.PAGESIZE)
    written = np.pad(fresh.image, (0, pages * CC.mmap.PAGESIZE - fresh.image.size)).reshape(pages, -1).any(axis=1)
    assert cache.used == written.sum() * CC.mmap.PAGESIZE <= fresh.image.nbytes // 8
    assert cache.get("n", compile_linear, *args) is kept


def frames(cache, make, owners, n, start=0):
    """n frames of calls: every owner with its own fixed argument, and two whose arguments change every frame (a
    frame's host data; a key length that grows); the programs compiled in each frame."""
    compiled = []
    for f in range(start, start + n):
        before = make.calls
        for i, o in enumerate(owners):
            cache.get(o, make, np.full(100, i, np.int8))
            if i == len(owners) // 2:
                cache.get("host", make, np.full(100, f, np.int8))
                cache.get("grows", make, np.ones(f + 1, np.int8))
        compiled.append(make.calls - before)
    return compiled


def test_a_budget_below_a_frames_programs_keeps_part_of_them_compiled():
    """A frame's 10 recurring programs (164 bytes each: the stub's image, the argument's copy) and two calls whose
    arguments change every frame, with a budget of 6: dropping the least recently used program would drop each
    just before its next call, so every frame would compile all 12; the cache keeps the owners' latest programs
    it holds instead, and drops the passed over ones (the host's data, the keys of frames before) first. Owners
    no longer called (another graph's) make way in the end."""
    cache, make = CompileCache(budget=6 * (64 + 100)), Compiler()
    compiled = frames(cache, make, [f"o{i}" for i in range(10)], 6)
    assert compiled[0] == 12 and all(c <= 12 - 5 for c in compiled[1:])       # >= 5 of the 10 kept
    assert cache.used <= cache.budget
    # another graph's nodes: once the first's have not been called for PER_NODE calls of every owner, their
    # programs make way
    compiled = frames(cache, make, [f"p{i}" for i in range(10)], 12, start=6)
    assert all(c <= 12 - 4 for c in compiled[-2:])
