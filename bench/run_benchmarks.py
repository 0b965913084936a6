"""Run the benchmarks one after the other, each in its own subprocess, and print everything (``make bench``).

They run sequentially on purpose: the figures are wall times and peak memory, and the machine has only a few cores.
Exits 0 when every benchmark ran (missed targets are reported in the output, not as failures); non-zero if one
crashed.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ("bench_segmentation.py", "bench_plan.py", "bench_bundle.py", "bench_fe.py")


def _source_state() -> str:
    """Commit and uncommitted engine files, so the figures can be tied to the code they measured."""
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "PatientImplantPlanner"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"source: {head}" + (f"; uncommitted engine files: {', '.join(changed)}" if changed else "")


def main() -> int:
    print(_source_state(), flush=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; benchmarks run one after the other", flush=True)
    failed = []
    for name in BENCHMARKS:
        print(f"=== {name} " + "=" * (100 - len(name)), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(HERE, name)], check=False)
        print(f"--- {name}: {time.perf_counter() - t0:.0f} s, exit {proc.returncode}", flush=True)
        print(flush=True)
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}")
        return 1
    print(f"all {len(BENCHMARKS)} benchmarks ran; targets are judged in their output (see docs/performance.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
