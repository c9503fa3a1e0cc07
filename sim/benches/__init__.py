"""cocotb test modules. Each is run by `sim.runner.run_bench` on generated Verilog."""
