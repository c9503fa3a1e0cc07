"""The GEMM engine: an output-stationary systolic array with its scratchpads and output stage."""
