"""The truth of the project: SAM 2 in NumPy and the integer ops the hardware implements bit for bit."""
