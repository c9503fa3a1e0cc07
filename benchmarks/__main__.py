"""Run benchmarks: `python -m benchmarks` (all) or `python -m benchmarks requant gemm`."""
import importlib
import pkgutil
import sys
from pathlib import Path

SKIP = {"common"}


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    available = sorted(m.name for m in pkgutil.iter_modules([str(here)])
                       if not m.name.startswith("_") and m.name not in SKIP)
    chosen = argv or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    for name in chosen:
        importlib.import_module(f"benchmarks.{name}").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
