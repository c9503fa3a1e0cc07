"""The runtime spine: backend interface, DDR arena, sessions and bound programs, layouts, the descriptor
checks run before every start, and the driver (the per-layer API over a backend) (docs/runtime.md)."""
