"""The convolution engine: on-the-fly im2col feeding the systolic array."""
