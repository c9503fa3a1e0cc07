"""Whole-model profile of SAM 2.1 tiny on the board presets (sam2fpga profile, timing only, no data).

Per preset: a steady-state video frame (image encoder, prompt encoder + mask decoder, memory attention
against a full bank, memory encoder) with the modelled time per stage, split overlay / host, against the
goals (KV260: image embedding <= 0.25 s, video frame <= 0.75 s) and the part's floor
(sw.perf.profile.part_floor_seconds: every DSP of the board's part a MAC at full use at the preset's clock).
kv260 and zcu104 carry a 16-lane vector engine (the element-wise ops on the overlay); pynq-z2 has none, so
also pynq-z2 as if it had an 8-lane one.
Each profile's JSON: build/bench/profile-<preset>[-vecL].json.

    python -m benchmarks profile
"""
from __future__ import annotations

import json

from benchmarks.common import BENCH_DIR, report

PRESETS = (("kv260", 0), ("zcu104", 0), ("pynq-z2", 0), ("pynq-z2", 8))


def run() -> None:
    from hw.config import preset
    from sw.perf.profile import GOALS_S, profile
    rows = []
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for name, lanes in PRESETS:
        prof = profile("tiny", preset(name), video=True, assume_vector_lanes=lanes)
        stem = f"profile-{name}" + (f"-vec{lanes}" if lanes else "")
        (BENCH_DIR / f"{stem}.json").write_text(json.dumps(prof.to_dict(), indent=1))
        for total, t in prof.totals().items():
            host = t["by_engine"].get("host", 0.0)
            rows.append({"preset": name + (f" +vec{lanes}" if lanes else ""), "total": total,
                         "seconds": round(t["seconds"], 4), "overlay_s": round(t["seconds"] - host, 4),
                         "host_s": round(host, 4), "GMAC": round(t["macs"] / 1e9, 2),
                         "DDR_MB": round(t["ddr_bytes"] / 1e6, 1),
                         "goal_s": GOALS_S.get(total, "") if name == "kv260" else "",
                         "part_floor_s": round(t["part_floor_seconds"], 4),
                         "profile_wall_s": round(prof.wall_s, 1)})
    report("profile", rows, "SAM 2.1 tiny at 1024, modelled (cycle model + host cost model), "
                            "stages run one after the other")
