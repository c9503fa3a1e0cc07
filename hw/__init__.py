"""Amaranth HDL: the engines, the overlay top and its AXI interfaces."""
