"""Programs bound to named buffers: binding and relocation in one place.

A compiled program (sw.compiler, sw.compile_conv, sw.compile_attention) carries `symbolic`
descriptors: every address field (hw.isa.ADDRESS_FIELDS) holds (buffer name, byte offset)
instead of a number. `link` turns them into the 32-byte descriptors for a given placement of
the buffers; nothing else in the host knows which fields are addresses.
"""
from __future__ import annotations

import numpy as np

from hw import isa

#: What a program's region is to the runtime: written once (program, weight), per run (input),
#: read back (output), or neither (scratch).
ROLES = ("program", "weight", "input", "output", "scratch")


class LinkError(ValueError):
    """A descriptor does not fit the format once its buffers are placed (or names an unknown buffer)."""


def link(symbolic: list[dict], addresses: dict[str, int]) -> tuple[list[dict], np.ndarray]:
    """Numeric descriptor fields and their packed bytes (len x 32, uint8) with each
    (buffer, offset) address resolved against `addresses` (buffer name -> DDR address)."""
    numeric = []
    raw = np.zeros(len(symbolic) * isa.DESCRIPTOR_BYTES, np.uint8)
    for j, d in enumerate(symbolic):
        fields = dict(d)
        for key in isa.ADDRESS_FIELDS:
            if isinstance(fields.get(key), tuple):
                name, off = fields[key]
                if name not in addresses:
                    raise LinkError(f"descriptor {j}: {key} names buffer {name!r}, which is not bound "
                                    f"(bound: {', '.join(addresses)})")
                fields[key] = addresses[name] + off
        try:
            packed = isa.pack_descriptor(**fields)
        except ValueError as e:
            raise LinkError(f"descriptor {j}: {e}") from None
        raw[j * isa.DESCRIPTOR_BYTES:(j + 1) * isa.DESCRIPTOR_BYTES] = np.frombuffer(packed, np.uint8)
        numeric.append(fields)
    return numeric, raw


def with_fields(symbolic: list[dict], numeric: list[dict]) -> list[dict]:
    """Descriptors whose non-address fields come from `numeric` (e.g. edited by a test) and whose
    addresses stay the symbolic ones of `symbolic` (so they bind like the compiled program)."""
    return [{**n, **{k: s[k] for k in isa.ADDRESS_FIELDS if isinstance(s.get(k), tuple)}}
            for s, n in zip(symbolic, numeric)]
