"""The vector engine: SAM 2's element-wise int8 ops (golden_model.intvec) on L lanes.

hw.vector.params holds the plain facts (op codes, widths, layouts) and imports no Amaranth;
hw.vector.engine is the hardware.
"""
