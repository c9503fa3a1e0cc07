"""The runtime spine: backend interface, DDR arena, sessions and bound programs, layouts (docs/runtime.md)."""
