"""Backends that execute compiled programs: sim (functional model, sim_model.py), rtl (Verilator), pynq."""
