"""Compilers: a quantised layer -> a DDR image and a descriptor list for the overlay, checked against
golden_model bit for bit. linear.py holds the GEMM compiler and what every compiler shares (Program,
CompileError, descriptor packing and wait-count scheduling); conv.py the convolution and depthwise
engines (and the planar feature-map layout FmapLayout); attention.py the attention engine; routes.py
decides which engine runs each convolution and does the host-side layout changes around it. Nothing here
touches a device: the runtime (sw/runtime/) binds and runs what these produce (docs/runtime.md)."""
