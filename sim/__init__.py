"""Hardware in simulators: cocotb benches and the RTL backend of the driver."""
