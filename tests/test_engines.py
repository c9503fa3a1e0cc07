"""The engine registry (sw/engines.py) covers hw.isa.ENGINES exactly, and each engine's commands are
what the checks, the sim model and the cycle model dispatch on."""
import numpy as np

from hw import isa
from hw.config import preset
from sw import engines
from sw.backends import cycles


def test_registry_covers_every_opcode_and_target():
    table = engines.engines()
    assert [e.name for e in isa.ENGINES] == list(table)
    names = set(isa.IMPLEMENTED_OPCODES) | set(isa.TARGETS)
    assert set(engines.commands()) == names
    for name, cmd in engines.commands().items():
        assert callable(cmd.check) and cmd.timing in engines.TIMINGS
        assert (cmd.timing == "slot") == (cmd.cycles is not None), name
        assert name == "LOAD" or callable(cmd.execute), name


def test_cycle_classes_come_from_the_registry():
    cfg = preset("sim")
    codes = [isa.OPCODES[o] for o in isa.IMPLEMENTED_OPCODES if o != "LOAD"]
    f = {k: np.zeros(len(codes), np.int64) for k in isa.FIELDS}
    f["opcode"] = np.array(codes)
    kinds = cycles.classify(cfg, f)
    want = [cycles.TIMING_CLASS[engines.commands()[o].timing] for o in isa.IMPLEMENTED_OPCODES if o != "LOAD"]
    assert kinds.tolist() == want
