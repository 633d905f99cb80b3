"""`lvd batch` on this machine's worker processes against `lvd batch --ray local` (a Ray instance the batch starts
itself, with all of this machine's CPUs): the same scans, the same options, one after the other.

Each run is a fresh `python -m lvd_core.cli batch` process with its own empty --out and --no-export. Peak memory
is each process's VmHWM (/proc, sampled every SAMPLE_S while the batch runs, the processes it started
included): per fitting worker (a pool process, or a Ray FitWorker actor) and, summed, for the others (the batch
process; for Ray also its raylet, GCS server and helpers). Writes benchmarks/results_scale_out.md.

    python benchmarks/bench_scale_out.py [--scans 6] [--threads 1] [--rounds 2]

Rounds alternate the order (local then Ray, Ray then local) so that a change in the machine's load falls on both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.cli import SAMPLE_SCAN  # noqa: E402
from lvd_core.checkpoints import DEFAULT_SCAN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from provenance import provenance  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results_scale_out.md"
SAMPLE_S = 0.5
WORKER_MARKS = ("spawn_main", "FitWorker")  # in a fitting worker's command line (pool process, Ray actor)


def descendants(root: int) -> list[int]:
    """root and every process under it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def peak_and_command(pid: int) -> tuple[int, str] | None:
    """(VmHWM in kB, command line) of a live process, None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return peak, command


def run_batch(scans: Path, out: Path, extra: list[str], threads: int) -> dict:
    """One `lvd batch` process: wall seconds, exit code, the summary line and peak memory by process."""
    command = [sys.executable, "-m", "lvd_core.cli", "batch", str(scans), "--out", str(out), "--no-export", "--threads", str(threads), *extra]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    environment.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    workers: set[int] = set()

    def sample() -> None:
        while process.poll() is None:
            for pid in descendants(process.pid):
                seen = peak_and_command(pid)
                if seen:
                    peaks[pid] = max(peaks.get(pid, 0), seen[0])
                    if any(mark in seen[1] for mark in WORKER_MARKS):
                        workers.add(pid)
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    summary = next((line.split(";")[0] for line in stdout.splitlines() if line.startswith("fitted ")), stderr.strip()[-200:])
    worker_mb = sorted(peaks[pid] / 1024 for pid in workers)
    return {
        "code": process.returncode,
        "seconds": seconds,
        "summary": summary,
        "worker_mb": worker_mb,
        "other_mb": sum(peak for pid, peak in peaks.items() if pid not in workers) / 1024,
        "other_count": len(peaks) - len(workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lvd-scale-out-"))
    try:
        scans = folder / "scans"
        scans.mkdir()
        for number in range(args.scans):
            shutil.copy(SAMPLE_SCAN, scans / f"scan{number}.ply")
        modes = [("local worker processes", []), ("Ray (local instance)", ["--ray", "local"])]
        rows = []
        for label, extra in [mode for round_ in range(args.rounds) for mode in modes[:: 1 if round_ % 2 == 0 else -1]]:
            result = run_batch(scans, folder / f"out-{len(rows)}", extra, args.threads)
            print(label, result, flush=True)
            rows.append((label, result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_results(rows, args)


def write_results(rows: list[tuple[str, dict]], args) -> None:
    load = os.getloadavg()[0]
    lines = [
        "# Scale-out: `lvd batch` against `lvd batch --ray`",
        "",
        f"`benchmarks/bench_scale_out.py`; {provenance([WEIGHTS_DIR / DEFAULT_SCAN_WEIGHTS['anny']])} {args.scans} copies of the sample "
        f"scan, `--no-export`, {args.threads} torch thread(s) per worker, {os.cpu_count()} CPUs shared with other work (load "
        f"average {load:.1f} at the end): runs next to each other saw the most similar load; the rounds alternate the order. "
        "Ray's instance is started by the batch (`--ray local`) and counted in its time. Peak memory: VmHWM per process.",
        "",
        "| run | exit | result | s | inputs/min | workers | peak MB per worker | other processes (peak MB, summed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, result in rows:
        workers = ", ".join(f"{mb:.0f}" for mb in result["worker_mb"]) or "-"
        rate = args.scans / result["seconds"] * 60
        lines.append(f"| {label} | {result['code']} | {result['summary']} | {result['seconds']:.1f} | {rate:.2f} | "
                     f"{len(result['worker_mb'])} | {workers} | {result['other_mb']:.0f} ({result['other_count']} processes) |")  # fmt: skip
    rates = {label: [args.scans / result["seconds"] * 60 for other, result in rows if other == label] for label, _ in rows}
    means = {label: sum(values) / len(values) for label, values in rates.items()}
    local, on_ray = means.values()
    lines += ["", f"Mean throughput: {', '.join(f'{label} {mean:.2f} inputs/min' for label, mean in means.items())}; "
                  f"Ray / local = {on_ray / local:.2f}."]  # fmt: skip
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
