"""What every benchmark shares: a table on stdout and JSON in build/bench/."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "build" / "bench"


def report(name: str, rows: list[dict], notes: str = "") -> Path:
    """Print `rows` as a table and write them with machine facts to build/bench/<name>.json."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {name} ==")
    if notes:
        print(notes)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "machine": platform.platform(), "notes": notes, "rows": rows}, indent=2))
    print(f"-> {path}")
    return path


#: The click on scikit-image's chelsea (x, y) the overlay benchmarks prompt with: on the cat.
CHELSEA_CLICK = (250.0, 170.0)
#: scikit-image's coffee (600 x 400), the second photo of a session: on the cup.
COFFEE_CLICK = (300.0, 200.0)


@contextlib.contextmanager
def environ(var: str, value: str):
    """Environment variable `var` set to `value` inside the block, as it was after it."""
    saved = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[var]
        else:
            os.environ[var] = saved


def busy_share() -> float:
    """The share of the machine's cores other work used over the last half second (a kernel's threads gain
    only on a free core: benchmarks print it beside their times)."""
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]
    (t0, i0), _, (t1, i1) = snap(), time.sleep(0.5), snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def best(fn, repeats: int = 3) -> float:
    """The shortest of `repeats` wall-clock times of fn() (s): the least disturbed by other load."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
