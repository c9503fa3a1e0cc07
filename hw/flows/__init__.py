"""Flows that turn generated Verilog into checks, estimates and bitstreams."""
