"""Backends that execute compiled programs: sim (functional model), rtl (Verilator), pynq."""
