"""Bad inputs through `python -m lvd_core.cli fit`: exit code, message, time, peak memory and outputs left.

Each case runs in a fresh process (peak memory from os.wait4: the process and the children it waited for),
with its own empty --out and --no-export (Blender's exporter runs in a process of its own, not measured here).
Each bad case's peak memory is compared with a normal fit of the same kind (the sample scan, a sample photo):
no case may take more than MEMORY_BOUND times as much. Crafted pickles and checkpoints would create a marker
file if they ran code. Writes benchmarks/results_reliability.md.

    python benchmarks/bench_reliability.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.cli import SAMPLE_SCAN  # noqa: E402
from lvd_core.checkpoints import DEFAULT_SCAN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from provenance import provenance  # noqa: E402

MEMORY_BOUND = 2.0
RESULTS = ROOT / "benchmarks" / "results_reliability.md"


class RunsCode:
    """A pickle that runs a shell command when loaded (it must be refused, never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def sample_mesh() -> trimesh.Trimesh:
    return trimesh.load(SAMPLE_SCAN, process=False)


def with_vertices(folder: Path, name: str, vertices: np.ndarray, faces: np.ndarray | None) -> Path:
    path = folder / name
    (trimesh.Trimesh(vertices, faces, process=False) if faces is not None else trimesh.PointCloud(vertices)).export(path)
    return path


def build_cases(folder: Path, data: Path | None, marker: Path) -> list[tuple[str, str, list[str]]]:
    """(case, kind, cli arguments after `fit`); kind "scan" or "photo" names the normal fit it is held to."""
    mesh = sample_mesh()
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    rng = np.random.default_rng(0)
    cases = [("normal scan (sample, cm)", "scan", [str(SAMPLE_SCAN)])]

    def scan(case: str, path: Path, *options: str) -> None:
        cases.append((case, "scan", [str(path), *options]))

    (folder / "empty.ply").write_bytes(b"")
    scan("empty file", folder / "empty.ply")
    (folder / "text.ply").write_text("this is not a PLY file\n")
    scan("text named .ply", folder / "text.ply")
    (folder / "truncated.ply").write_bytes(SAMPLE_SCAN.read_bytes()[: SAMPLE_SCAN.stat().st_size // 2])
    scan("truncated PLY (half)", folder / "truncated.ply")
    scan("all vertices NaN", with_vertices(folder, "all_nan.ply", np.full_like(vertices, np.nan), faces))
    some_nan = vertices.copy()
    some_nan[rng.choice(len(vertices), len(vertices) // 10, replace=False)] = np.nan
    scan("10% of vertices NaN", with_vertices(folder, "some_nan.ply", some_nan, faces))
    for label, offset in (("3 m", 300.0), ("1e30", 1e30)):
        stray = vertices.copy()
        stray[0] += [0.0, 0.0, offset]
        scan(f"one vertex {label} away", with_vertices(folder, f"stray_{label}.ply", stray, faces))
    scan("scan in km (unitless)", with_vertices(folder, "km.ply", vertices / 100_000, faces))
    scan("--units m on a cm scan", SAMPLE_SCAN, "--units", "m")
    scan("50 points", with_vertices(folder, "few.ply", vertices[:50], None))
    flat = vertices.copy()
    flat[:, 2] = 0
    scan("flat (all z = 0)", with_vertices(folder, "flat.ply", flat, faces))
    (folder / "bad_index.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999\n")
    scan("face index out of range", folder / "bad_index.obj")
    (folder / "scan.xyz").write_text("0 0 0\n")
    scan("unsupported extension", folder / "scan.xyz")
    (folder / "a_folder.ply").mkdir()
    scan("a folder named .ply", folder / "a_folder.ply")
    (folder / "loop.ply").symlink_to(folder / "loop.ply")
    scan("symbolic link loop", folder / "loop.ply")
    scan("--out is a file", SAMPLE_SCAN, "--out", str(folder / "text.ply"))

    (folder / "text.pt").write_text("not a checkpoint")
    scan("--weights: a text file", SAMPLE_SCAN, "--weights", str(folder / "text.pt"))
    torch.save({"state_dict": RunsCode(marker)}, folder / "code.pt")
    scan("--weights: a pickle that runs code", SAMPLE_SCAN, "--weights", str(folder / "code.pt"))
    shipped = torch.load(WEIGHTS_DIR / DEFAULT_SCAN_WEIGHTS["anny"], weights_only=True)
    kwargs = dict(shipped["config"]["kwargs"])  # every width of the shipped network times 64: gigabytes, if built
    kwargs.update({key: 64 * kwargs[key] for key in ("global_width", "embed_width", "hidden")},
                  channels=[64 * width for width in kwargs["channels"]])  # fmt: skip
    torch.save(dict(shipped, config=dict(shipped["config"], kwargs=kwargs)), folder / "huge.pt")
    scan("--weights: declares a 64x wider network", SAMPLE_SCAN, "--weights", str(folder / "huge.pt"))
    with open(folder / "model.pkl", "wb") as file:
        pickle.dump({"v_template": RunsCode(marker)}, file)
    scan("--model-file: a pickle that runs code", SAMPLE_SCAN, "--body", "smpl", "--model-file", str(folder / "model.pkl"))

    if data is None:
        return cases
    photo, mask = data / "images" / "img2.png", data / "images" / "img2_mask.png"
    cases.append(("normal photo (img2 + its mask)", "photo", [str(photo)]))

    def image(case: str, path: Path) -> None:
        cases.append((case, "photo", [str(path)]))

    Image.new("RGB", (640, 480), (128, 128, 128)).save(folder / "grey.png")
    image("grey photo, no person", folder / "grey.png")
    Image.open(photo).save(folder / "black.png")
    Image.new("L", Image.open(photo).size, 0).save(folder / "black_mask.png")
    image("all-black mask", folder / "black.png")
    both = np.concatenate([np.asarray(Image.open(photo).convert("RGB"))] * 2, axis=1)
    Image.fromarray(both).save(folder / "two.png")
    Image.fromarray(np.concatenate([np.asarray(Image.open(mask).convert("L"))] * 2, axis=1)).save(folder / "two_mask.png")
    image("a mask of two people", folder / "two.png")
    (folder / "cut.png").write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    image("truncated PNG (half)", folder / "cut.png")
    Image.new("RGB", (1, 1)).save(folder / "pixel.png")
    image("1 x 1 px image", folder / "pixel.png")
    Image.new("L", (9400, 9400)).save(folder / "bomb.png")  # 86 KB, 88 M pixels: just under Pillow's limit
    image("86 KB PNG of 9400 x 9400 px", folder / "bomb.png")
    large = Image.open(photo).convert("RGB").resize((7000, 4000))
    large.save(folder / "large.jpg", quality=85)
    image("7000 x 4000 px JPEG (decoded at half size)", folder / "large.jpg")
    return cases


def run_case(arguments: list[str], out: Path) -> tuple[int, str, float, float]:
    """(exit code, message, seconds, peak memory MB) of `lvd fit ARGUMENTS --out OUT --no-export`; the message is
    the error, else the first warning, else the fit's quality line."""
    if "--out" not in arguments:
        arguments = [*arguments, "--out", str(out)]
    command = [sys.executable, "-m", "lvd_core.cli", "fit", *arguments, "--no-export"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        output.seek(0)
        lines = [line for line in output.read().decode(errors="replace").splitlines() if line.strip()]
    code = os.waitstatus_to_exitcode(status)
    said = [line for prefix in ("error:", "warning:", "residual", "silhouette") for line in lines if line.startswith(prefix)]
    message = said[0] if said else (lines[0] if lines else "")
    return code, message, seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the sample photos' folder")
    args = parser.parse_args()
    data = args.data if (args.data / "images" / "img2.png").is_file() else None
    rows, normal_mb = [], {}
    with tempfile.TemporaryDirectory(prefix="lvd-reliability-") as scratch:
        folder, marker = Path(scratch), Path(scratch) / "code_ran"
        for number, (case, kind, arguments) in enumerate(build_cases(folder, data, marker)):
            out = folder / f"out{number}"
            code, message, seconds, peak_mb = run_case(arguments, out)
            message = message.replace(f"{folder}/", "").replace(f"{ROOT}/", "")  # paths as the case named them
            outputs = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
            normal_mb.setdefault(kind, peak_mb)  # each kind's first case is its normal fit
            rows.append((case, kind, code, message, seconds, peak_mb, outputs))
            print(f"{case}: exit {code}, {seconds:.1f} s, {peak_mb:.0f} MB, {len(outputs)} outputs: {message}", flush=True)
        code_ran = marker.exists()
    write_results(rows, normal_mb, code_ran)


def write_results(rows: list, normal_mb: dict, code_ran: bool) -> None:
    worst = max(peak / normal_mb[kind] for _, kind, _, _, _, peak, _ in rows)
    lines = [
        "# Reliability: bad inputs through `lvd fit`",
        "",
        f"`benchmarks/bench_reliability.py`; {provenance([WEIGHTS_DIR / DEFAULT_SCAN_WEIGHTS['anny']])} One torch thread, "
        "`--no-export`. Memory: peak resident set of the process (os.wait4); x normal: against the normal fit of the "
        "same kind (first row of each kind). Outputs: files left in the case's own --out.",
        "",
        "| case | exit | message | s | peak MB | x normal | outputs left |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, kind, code, message, seconds, peak, outputs in rows:
        shown = message.replace("|", "\\|")
        lines.append(f"| {case} | {code} | {shown} | {seconds:.1f} | {peak:.0f} | {peak / normal_mb[kind]:.2f} | "
                     f"{', '.join(outputs) or '-'} |")  # fmt: skip
    lines += ["", f"Largest memory against the normal fit of its kind: {worst:.2f}x (bound {MEMORY_BOUND}x). "
              f"Crafted pickles ran code: {'YES' if code_ran else 'no'}."]  # fmt: skip
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    if worst > MEMORY_BOUND or code_ran:
        sys.exit(1)


if __name__ == "__main__":
    main()
