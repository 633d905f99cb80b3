"""The stamp every results file carries (the commit measured and the sha256 of the files, networks and model
data, it used), and the writing of a results file."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def provenance(files: list[Path]) -> str:
    """'Commit abc1234 (+changes when lvd_core differs from it); sha256 (first 12 digits): `path` digest, ...'."""
    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()  # noqa: E731
    dirty = " +changes" if git("status", "--porcelain", "lvd_core") else ""
    digests = ", ".join(f"`{Path(f).resolve().relative_to(ROOT)}` {hashlib.sha256(Path(f).read_bytes()).hexdigest()[:12]}" for f in files)
    return f"Commit {git('rev-parse', '--short', 'HEAD')}{dirty}; sha256 (first 12 digits): {digests}."


def write_results(name: str, lines: list[str]) -> None:
    """Print the lines and write them as benchmarks/results_<name>.md."""
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / f"results_{name}.md").write_text(text)
