"""The `lvd` command: fit scans (one, or a batch), run the demo, train a scan network.

    lvd fit SCAN [options]          lvd batch DIR|GLOB ... [options]
    lvd demo [--out DIR]            lvd train --body NAME [options]

Commands only translate options into lvd_core calls and print what happened (EXIT_CODES). The rigged
.glb/.fbx are written by the Blender extension's headless exporter (lvd_blender.headless_export) in a process of
its own: the core never imports Blender.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = ("exit codes: 0 every input fitted; 1 an input could not be read or fitted; 2 usage or setup (options, "
              "--out, --model-file, --weights, a missing input); 130 interrupted")  # fmt: skip
RIGGED_EXPORTER = "lvd_blender.headless_export"  # run as a module in a process of its own, never imported here
RIGGED_EXPORT_TIMEOUT_S = 600
PREVIEW_SCAN_POINTS = 20_000
DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_SCAN = DATA_DIR / "sample_scan.ply"


class UsageError(Exception):
    """Options that cannot work together, a setup that cannot work (--out, --model-file, --weights) or an input
    that is not there (exit code 2)."""


# ---------------------------------------------------------------------------------------------------------
# options


@dataclass
class FitSettings:
    """What `fit` and `batch` pass to every fit (plain values: batch workers receive a pickled copy)."""

    out: Path
    fit_options: dict  # keyword arguments of pipeline.fit_scan / fit_photo
    export: bool = True
    preview: bool = True


def build_parser() -> argparse.ArgumentParser:
    from .body import BODY_MODEL_NAMES
    from .devices import GPU_BATCH
    from .scale_out import cluster_address

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser would otherwise reset `lvd --debug fit ...` to False.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of unexpected errors")

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=positive_int, default=1, metavar="N",
                         help="torch CPU threads per process (default: 1; the fit's many small operations are slower on more)")

    fitting = argparse.ArgumentParser(add_help=False)
    group = fitting.add_argument_group("fitting")
    group.add_argument("--body", default="anny", choices=BODY_MODEL_NAMES,
                       help="body model to fit (default: anny). anny-hand fits the left and the right hand and keeps the closer "
                            "(anny-hand-left / -right force a side); smpl, smplx and mano without --weights are fitted to "
                            "Anny's fit (the skeletons by joint name, then the surfaces)")  # fmt: skip
    group.add_argument("--model-file", metavar="PATH", help="the SMPL / SMPL-X / MANO model file (licensed, not shipped)")
    group.add_argument("--weights", metavar="PATH", help="scan network checkpoint (default: the one shipped for --body)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available")
    group.add_argument("--units", choices=("m", "cm", "mm"), help="the scan's units (default: detected from its size)")
    group.add_argument("--up", choices=("y", "z"), help="the scan's up axis (default: detected)")
    group.add_argument("--no-refine", dest="refine", action="store_false", help="skip the refinement against the scan surface or the photo's person mask (faster)")
    group.add_argument("--iterations", type=positive_int, metavar="N", help="LVD descent iterations (default: 10)")
    group.add_argument("--facings", type=positive_int, metavar="N",
                       help="facings about the up axis LVD tries (default: bodies 1 from the person's facing the landmarks "
                            "find, 4 when no person is found; hands 4, each also upside down)")  # fmt: skip
    group.add_argument("--no-landmarks", dest="landmarks", action="store_false",
                       help="skip the person detector (MediaPipe Pose): on rendered views of body scans (their facing is "
                            "then assumed: +Z in a Y-up file, -Y in a Z-up one) and on photos (its landmarks in the "
                            "silhouette refinement)")  # fmt: skip
    group.add_argument("--no-limb-search", dest="limbs", action="store_false",
                       help="keep body scans' limbs where the network reads them (by default, after the refinement, "
                            "misread limbs are found again on the scan and the body refined once more)")  # fmt: skip
    group.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output folder (default: out)")
    group.add_argument("--no-export", dest="export", action="store_false", help="skip the rigged .glb/.fbx (needs Blender's bpy)")
    group.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True, help="write <name>_preview.png")

    parser = argparse.ArgumentParser(
        prog="lvd", parents=[common], description="Learned Vertex Descent: fit a rigged, posed, shaped body model to scans.",
        epilog=EXIT_CODES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit", parents=[common, threads, fitting], help="fit one scan", description="Fit one scan (or photo) and write its outputs.",
        epilog=EXIT_CODES,
    )
    fit.add_argument("input", type=Path, help="scan file (.obj .ply .stl .off .glb .gltf) or photo (.png .jpg .webp; its "
                                              "person mask NAME_mask.png beside it is used when there, else found automatically)")  # fmt: skip
    fit.set_defaults(run=run_fit)

    batch = commands.add_parser(
        "batch",
        parents=[common, threads, fitting],
        help="fit many scans",
        description="Fit many scans; resumable (inputs whose complete outputs exist for the same file are skipped), one bad "
                    "file does not stop the rest.",
        epilog=EXIT_CODES,
    )
    batch.add_argument("inputs", nargs="+", metavar="DIR|GLOB|FILE", help="folders (their scans and photos), glob patterns or files")
    batch.add_argument("--workers", type=positive_int, metavar="N", help="CPU worker processes (default: min(2, CPU count))")
    batch.add_argument("--batch-size", type=positive_int, metavar="N",
                       help=f"scans fitted together, the descent and the body fit batched (default: {GPU_BATCH} on a GPU; "
                            "1 on the CPU, where worker processes run in parallel instead)")  # fmt: skip
    batch.add_argument("--force", action="store_true", help="fit again inputs whose outputs already exist")
    batch.add_argument("--ray", nargs="?", const="", type=cluster_address, metavar="ADDRESS",
                       help="fit on a Ray cluster (auto, HOST:PORT, ray://HOST:PORT; alone: RAY_ADDRESS, the cluster `ray start` "
                            "started here, else a local one); inputs and --out on storage every node sees; needs pip install ray")  # fmt: skip
    batch.set_defaults(run=run_batch)

    demo = commands.add_parser(
        "demo",
        parents=[common, threads],
        help="fit the bundled sample scan",
        description="Fit the bundled sample scan with the shipped network and compare with its known ground truth.",
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), metavar="DIR", help="output folder (default: out/demo)")
    demo.set_defaults(run=run_demo)

    train = commands.add_parser(
        "train",
        parents=[common, threads],
        help="train a scan network",
        description="Train a scan LVD network on synthetic scans; running the same command again resumes.",
    )
    train.add_argument("--body", default="anny", choices=BODY_MODEL_NAMES, help="body model (default: anny)")
    train.add_argument("--model-file", metavar="PATH", help="the SMPL / MANO model file")
    train.add_argument("--out", type=Path, metavar="DIR", help="checkpoint folder (default: out/train-<body>)")
    train.add_argument("--steps", type=positive_int, help="total optimisation steps")
    train.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much time")
    train.add_argument("--batch", type=positive_int, help="scans per step")
    train.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3); resumed runs keep their recipe but take this")
    train.add_argument("--subset", type=positive_int, help="vertices the network predicts")
    train.add_argument("--size", choices=("compact", "large"),
                       help="network of a new run (default: compact, the shipped one; large: 4x the parameters and a 64^3 grid, for a GPU)")
    train.add_argument("--workers", type=int, metavar="N", help="data worker processes building the synthetic scans (default: 1)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    # lvd_core.devices.PRECISIONS, spelled out: importing it would load torch for `lvd --help`.
    train.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                       help="number format of the network in training steps (default: bfloat16 where the CPU or GPU has it natively)")
    train.set_defaults(run=run_train)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def fit_settings(args) -> FitSettings:
    options = dict(body=args.body, device=args.device, units=args.units, up=args.up, refine=args.refine, landmarks=args.landmarks,
                   limbs=args.limbs)  # fmt: skip
    optional = dict(model_path=args.model_file, weights=args.weights, iterations=args.iterations, facings=args.facings)
    options.update({name: value for name, value in optional.items() if value is not None})
    return FitSettings(args.out, options, args.export, args.preview)


def check_setup(options: dict, sources: list[Path]):
    """The torch device the fits will use; UsageError when the body model, the device or the networks the
    inputs need (--weights, or the default for the body) cannot be used."""
    from .body import load_body_model
    from .devices import pick_device
    from .checkpoints import load_network

    try:
        load_body_model(options["body"], options.get("model_path"))
        device = pick_device(options["device"])
        for kinds in {("photo" if is_photo(source) else "scan") for source in sources}:
            load_network(weights_path(kinds, options), device)
    except (ValueError, RuntimeError, OSError) as error:  # BodyModelError, CheckpointError, InputError are ValueErrors
        raise UsageError(one_line(error)) from None
    return device


def weights_path(kind: str, options: dict) -> Path:
    """The network checkpoint a fit of this kind ("scan" or "photo") uses with these options."""
    from .body import load_body_model
    from .checkpoints import resolve_weights
    from .transfer import TRANSFERRED_BODIES, source_model

    body, weights = options["body"], options.get("weights")
    if weights is None and body in TRANSFERRED_BODIES:  # fitted through Anny's network (lvd_core.transfer)
        body = source_model(load_body_model(body, options.get("model_path")))
    if kind == "scan":
        return resolve_weights(body, weights)
    from .photo import DEFAULT_PHOTO_WEIGHTS

    return resolve_weights(body, weights, defaults=DEFAULT_PHOTO_WEIGHTS, kind="photo",
                           no_default="fit photos with body 'anny'")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# one input


@dataclass
class Outcome:
    """What became of one input (what a batch worker sends back)."""

    source: str
    status: str  # "fitted", "failed" or "skipped"
    residual_mm: float | None = None
    seconds: float = 0.0
    message: str = ""
    quality: str = ""  # the result's quality_label()
    quality_cell: str = "-"  # the same, short
    doubtful: bool = False  # the result's: the network likely misread the pose
    timings: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # what was left out or guessed (e.g. no rigged export, no units)


def failed_outcome(source: str, message: str) -> Outcome:
    """The Outcome of an input that could not be fitted, saying why."""
    return Outcome(source, "failed", message=message)


def is_photo(path: Path) -> bool:
    from .inputs.image import PHOTO_EXTENSIONS

    return path.suffix.lower() in PHOTO_EXTENSIONS


def fit_input(source: Path, stem: str, settings: FitSettings) -> tuple:
    """Fit one scan or photo and write its outputs: (FitResult, WrittenOutputs). Core errors propagate."""
    from . import pipeline

    options = settings.fit_options
    if is_photo(source):
        from .inputs.image import given_mask
        from .photo import fit_photo

        result = fit_photo(source, given_mask(source), **options)
        return result, write_outputs(source, stem, settings, result)
    scan = load_input_scan(source, options)
    result = pipeline.fit_scan(scan, **options)
    return result, write_outputs(source, stem, settings, result, scan)


def load_input_scan(source: Path, options: dict):
    """The scan as the fit reads it, loaded once for the fit and the preview."""
    from .body import load_body_model
    from .inputs.scan import load_scan

    kind = load_body_model(options["body"], options.get("model_path")).kind
    return load_scan(source, units=options.get("units"), up=options.get("up"), kind=kind)


def is_mask_of_another_input(path: Path) -> bool:
    """A photo's person mask (<stem>_mask.png beside <stem>.<photo extension>): not an input of its own."""
    from .inputs.image import MASK_SUFFIX, PHOTO_EXTENSIONS

    if not is_photo(path) or not path.stem.endswith(MASK_SUFFIX):
        return False
    photo_stem = path.stem[: -len(MASK_SUFFIX)]
    return any(path.with_name(photo_stem + extension).is_file() for extension in PHOTO_EXTENSIONS)


def write_outputs(source: Path, stem: str, settings: FitSettings, result, scan=None):
    """Check the fit, then write its files (lvd_core.outputs.write_result: the scan's points in its preview,
    the input's fingerprint in its json): a WrittenOutputs."""
    from .body import load_body_model
    from .outputs import write_result
    from .results import check_residual

    body = load_body_model(result.body_name, settings.fit_options.get("model_path"))
    kind = "photo" if is_photo(source) else "scan"
    if kind == "scan":
        check_residual(result, fix="check --units and --up")
    scan_points = preview_points(scan) if settings.preview and scan is not None else None
    record = {"input": input_record(source), "lvd_version": __version__,
              "weights_sha256": file_sha256(weights_path(kind, settings.fit_options))}  # fmt: skip
    writer = write_rigged_in_blender if settings.export else None
    written = write_result(result, settings.out, stem, body=body, scan_points=scan_points, rigged_writer=writer,
                           preview=settings.preview, record=record)  # fmt: skip
    if result.units == "unitless" and kind == "scan":
        written.warnings.append(f"units unknown ({unitless_size(result, body)}): sized like the model; pass --units if it is a person")
    return written


def preview_points(scan):
    """A sample of the loaded scan's surface points for the preview (input frame)."""
    import numpy as np

    return scan.points[np.random.default_rng(0).permutation(len(scan.points))[:PREVIEW_SCAN_POINTS]]


def unitless_size(result, body) -> str:
    import numpy as np

    from .outputs import input_up_axis

    extent = np.ptp(result.vertices_input, axis=0)
    return f"the fitted body is {extent['xyz'.index(input_up_axis(result, body))]:.4g} units tall"


def input_record(source: Path) -> dict:
    """What a json says of its input, so a resumed batch knows the outputs are this file's."""
    return {"path": str(source.resolve()), "size": source.stat().st_size, "sha256": file_sha256(source)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RiggedExporter:
    """Blender's headless exporter (`python -m lvd_blender.headless_export`) in a process of its own (bpy's
    sys.path entries, memory and crashes stay out of this process and a batch's workers), started once and fed
    one character after another: bpy's import is paid once per command or worker, while the first fit runs.

    `write` is lvd_core.outputs.write_result's rigged writer: it sends the request and returns the function
    that waits for the files (RiggedExportError with the reason). A failed or dead exporter is replaced by a
    fresh one at the next request."""

    def __init__(self):
        source_root = str(Path(__file__).resolve().parents[1])  # the extension's sources beside this lvd_core
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])))
        self.log = tempfile.TemporaryFile()  # the exporter's stderr: its last line says why it died
        self.process = subprocess.Popen([sys.executable, "-m", RIGGED_EXPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=environment)  # fmt: skip
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)  # the process ended

    def write(self, stem: str, character: dict, targets: dict):
        """Ask for `character`'s rigged files at `targets` ({"glb" | "fbx": path}); returns the function that
        waits until they are written."""
        from .outputs import RiggedExportError

        request = pickle.dumps({"name": stem, "character": character, "targets": {kind: str(path) for kind, path in targets.items()}})
        with contextlib.suppress(OSError):  # a dead exporter: its reason is read by `finish`
            self.process.stdin.write(request)
            self.process.stdin.flush()

        def finish() -> None:
            try:
                reply = self.replies.get(timeout=RIGGED_EXPORT_TIMEOUT_S)
            except queue.Empty:
                self.close(kill=True)
                raise RiggedExportError(f"Blender's export took over {RIGGED_EXPORT_TIMEOUT_S} s") from None
            if reply is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)  # its exit code, when its stderr says nothing
                reason = self._last_error()
                self.close()
                raise RiggedExportError(f"Blender's export failed: {reason}")
            if "error" in reply:
                raise RiggedExportError(f"Blender's export failed: {reply['error']}")

        return finish

    def _last_error(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {self.process.returncode}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, kill: bool = False, wait: bool = True) -> None:
        """End the exporter: it finishes the request it is on (unless `kill`), then exits (waited for with
        `wait`; every file asked for is written by then, and Blender's own exit need not hold this process)."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        if kill:
            self.process.kill()
        if wait:
            try:
                self.process.wait(timeout=RIGGED_EXPORT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


_rigged_exporter: RiggedExporter | None = None


def start_rigged_exporter() -> RiggedExporter:
    """This process's rigged exporter, started now if it is not running (see RiggedExporter)."""
    global _rigged_exporter
    if _rigged_exporter is None or not _rigged_exporter.alive:
        if _rigged_exporter is not None:
            _rigged_exporter.close()
        _rigged_exporter = RiggedExporter()
    return _rigged_exporter


def close_rigged_exporter(wait: bool = True) -> None:
    global _rigged_exporter
    if _rigged_exporter is not None:
        _rigged_exporter.close(wait=wait)
        _rigged_exporter = None


def write_rigged_in_blender(stem: str, character: dict, targets: dict):
    """lvd_core.outputs.write_result's rigged writer: this process's RiggedExporter (RiggedExportError with the
    reason when bpy or the extension is missing)."""
    from .outputs import RiggedExportError

    reason = rigged_export_unavailable()
    if reason:
        raise RiggedExportError(reason)
    return start_rigged_exporter().write(stem, character, targets)


def rigged_export_unavailable() -> str | None:
    """None when Blender's bpy and the extension's package are installed; else why not, in one line. Looked
    up without importing them (bpy is imported only by the exporter's own process)."""
    import importlib.util

    if importlib.util.find_spec("bpy") is None:
        return "Blender's bpy module is not installed (pip install bpy)"
    if importlib.util.find_spec(RIGGED_EXPORTER.split(".")[0]) is None:
        return "the Blender extension's package (lvd_blender) is not installed beside lvd_core"
    return None


def fit_quietly(source: Path, stem: str, settings: FitSettings, debug: bool = False) -> Outcome:
    """fit_input that turns any error into a failed Outcome (a batch goes on with the next input): the core's
    one-line message, else the exception's first line (its traceback with `debug`)."""
    started = time.perf_counter()
    try:
        result, written = fit_input(source, stem, settings)
    except Exception as error:
        return Outcome(str(source), "failed", seconds=time.perf_counter() - started, message=error_message(error, debug))
    return fitted_outcome(source, result, written, time.perf_counter() - started)


def fitted_outcome(source: Path, result, written, seconds: float) -> Outcome:
    from .measurements import describe

    quality = result.quality_label() + (f"\nbody: {describe(written.description)}" if written.description else "")
    return Outcome(str(source), "fitted", result.residual_mm, seconds, timings=result.timings,
                   paths={kind: str(path) for kind, path in written.paths.items()}, quality=quality,
                   quality_cell=result.quality_label(short=True), doubtful=result.doubtful,
                   message="; ".join(written.warnings), warnings=written.warnings)  # fmt: skip


def fit_together(todo: list[tuple[int, Path, str]], settings: FitSettings, debug: bool = False) -> list[tuple[int, Outcome]]:
    """(index, source, stem) inputs -> (index, Outcome): the scans fitted in one batch (pipeline.fit_scans:
    the descent and the body fit batched, as a GPU wants), their outputs written one by one; photos one at a
    time. Each scan's seconds are its share of the batch."""
    from . import pipeline

    outcomes = [(index, fit_quietly(source, stem, settings, debug)) for index, source, stem in todo if is_photo(source)]
    started = time.perf_counter()
    scans = []
    for index, source, stem in todo:
        if not is_photo(source):
            try:
                scans.append((index, source, stem, load_input_scan(source, settings.fit_options)))
            except ValueError as error:
                outcomes.append((index, failed_outcome(str(source), error_message(error, debug))))
    try:
        results = pipeline.fit_scans([scan for *_, scan in scans], **settings.fit_options) if scans else []
    except Exception as error:  # a problem of the options: no scan of the batch could be fitted
        results = [error] * len(scans)
    share = (time.perf_counter() - started) / max(len(scans), 1)
    for (index, source, stem, scan), result in zip(scans, results):
        try:
            if isinstance(result, Exception):
                raise result
            outcome = fitted_outcome(source, result, write_outputs(source, stem, settings, result, scan), share)
        except Exception as error:
            outcome = Outcome(str(source), "failed", seconds=share, message=error_message(error, debug))
        outcomes.append((index, outcome))
    return outcomes


def error_message(error: Exception, debug: bool) -> str:
    if isinstance(error, ValueError):  # the core's errors: one line that says what to fix
        return one_line(error)
    if debug:
        return "".join(traceback.format_exception(error)).rstrip()
    return f"{type(error).__name__}: {one_line(error)} (run with --debug for the traceback)"


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def format_timings(timings: dict) -> str:
    return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items())


def note_missing_rigged_export(settings: FitSettings, start: bool = False) -> str | None:
    """Say once, before fitting, why the rigged files will not be written when they were asked for (and stop
    asking for them); returns the reason for the summary. With `start`, when they will be written, this
    process's exporter starts now: Blender's import overlaps the fit."""
    reason = settings.export and rigged_export_unavailable()
    if reason:
        print(f"warning: no rigged .glb/.fbx for any input: {reason}", file=sys.stderr)
        settings.export = False
    elif settings.export and start:
        start_rigged_exporter()
    return reason or None


# ---------------------------------------------------------------------------------------------------------
# the output folder


@contextlib.contextmanager
def output_folder(out: Path):
    """Create `out` if need be, check that it is a folder this process can write to, and hold it for this run:
    a lock released when the process ends, even killed (two runs on one folder would fit the same inputs twice
    and mix their files); what a killed run left half-written there is removed. UsageError when it cannot."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; pick a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise UsageError(f"cannot write to --out {out} ({error.strerror or error}); pick a folder you can write to") from None
    descriptor = os.open(out, os.O_RDONLY)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs on one folder are the user's care
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another lvd run is writing to {out}; wait for it to finish or pick another --out") from None
        from .outputs import remove_partial_files

        remove_partial_files(out)
        yield out
    finally:
        os.close(descriptor)


def finished_record(out: Path, stem: str) -> dict | None:
    """The json of out/<stem> when it is a complete record of a fit (written by this version: it names its
    input and outputs), else None."""
    try:
        record = json.loads((out / f"{stem}.json").read_text())
    except (OSError, ValueError):
        return None
    complete = isinstance(record, dict) and isinstance(record.get("input"), dict) and isinstance(record.get("outputs"), dict)
    return record if complete else None


def is_done(out: Path, stem: str, source: Path) -> bool:
    """Whether out/<stem>'s outputs are complete and were fitted from this very file (path, size and content)."""
    record = finished_record(out, stem)
    if record is None or not all((out / name).is_file() for name in record["outputs"].values()):
        return False
    recorded = record["input"]
    if (recorded.get("path"), recorded.get("size")) != (str(source.resolve()), source.stat().st_size):
        return False
    return recorded.get("sha256") == file_sha256(source)


def output_stems(sources: list[Path], out: Path) -> list[str]:
    """Each input's output name in `out`: its stem, else <stem>-2, -3 ... so that no two inputs share one, in
    this run or with earlier ones (a/x.obj and b/x.obj). An input whose outputs already exist keeps their name
    (their json records its path); the others take the first name free here and in `out`."""
    owners: dict[str, str | None] = {}

    def owner(stem: str) -> str | None:  # the input path out/<stem>.json records
        if stem not in owners:
            record = finished_record(out, stem)
            owners[stem] = record["input"].get("path") if record else None
        return owners[stem]

    def candidates(stem: str):
        yield stem
        number = 2
        while True:
            yield f"{stem}-{number}"
            number += 1

    paths = [str(source.resolve()) for source in sources]
    stems: list[str | None] = [None] * len(sources)
    taken: set[str] = set()
    for i, source in enumerate(sources):
        for stem in candidates(source.stem):
            if not (out / f"{stem}.json").exists():
                break
            if owner(stem) == paths[i] and stem not in taken:
                stems[i] = stem
                taken.add(stem)
                break
    for i, source in enumerate(sources):
        if stems[i] is None:
            stems[i] = next(stem for stem in candidates(source.stem) if stem not in taken and owner(stem) in (None, paths[i]))
            taken.add(stems[i])
    return stems


# ---------------------------------------------------------------------------------------------------------
# commands


def run_fit(args) -> int:
    check_input_file(args.input)
    settings = fit_settings(args)
    with output_folder(settings.out):  # checked first: a fit's work is not thrown away on a folder it cannot write
        note_missing_rigged_export(settings, start=True)
        check_setup(settings.fit_options, [args.input])
        [stem] = output_stems([args.input], settings.out)
        outcome = fit_quietly(args.input, stem, settings, getattr(args, "debug", False))
    if outcome.status == "failed":
        print(f"error: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    for warning in outcome.warnings:
        print(f"warning: {args.input}: {warning}", file=sys.stderr)
    print(f"fitted {args.input} in {outcome.seconds:.1f} s ({format_timings(outcome.timings)})")
    print(outcome.quality)
    print("wrote " + ", ".join(outcome.paths.values()))
    return EXIT_OK


def check_input_file(path: Path) -> None:
    """UsageError naming what `path` is when it is not a readable file: missing, a folder, a link loop."""
    if path.is_file():
        return
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a scan or photo; fit its files with `lvd batch {path}`")
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop so
            raise UsageError(f"{path} is a symbolic link loop; point the link at a scan or photo") from None
        except OSError as error:
            raise UsageError(f"{path} is a symbolic link to {os.readlink(path)}, which {error.strerror.lower()}") from None
    raise UsageError(f"no such file: {path}")


def run_batch(args) -> int:
    inputs = collect_inputs(args.inputs)
    settings = fit_settings(args)
    with output_folder(settings.out):
        device = check_setup(settings.fit_options, inputs)
        no_export = note_missing_rigged_export(settings)
        outcomes = fit_batch(inputs, settings, device, args)
    print(summary_table([outcomes[index] for index in range(len(inputs))]))
    failed = sum(outcome.status == "failed" for outcome in outcomes.values())
    fitted = sum(outcome.status == "fitted" for outcome in outcomes.values())
    doubtful = sum(outcome.doubtful for outcome in outcomes.values())
    warned = sum(bool(outcome.warnings) for outcome in outcomes.values())
    check = f" ({doubtful} marked doubtful, \", check\" above: the network may have misread the pose)" if doubtful else ""
    warnings = f", {warned} with warnings (notes above)" if warned else ""
    print(f"fitted {fitted}{check}{warnings}, skipped {len(inputs) - fitted - failed} (already done), failed {failed}; "
          f"outputs in {settings.out}")  # fmt: skip
    if no_export:
        print(f"no rigged .glb/.fbx were written: {no_export}")
    return EXIT_FAILED if failed else EXIT_OK


def fit_batch(inputs: list[Path], settings: FitSettings, device, args) -> dict[int, Outcome]:
    """Fit the inputs not done yet (output_folder held), reporting each as it ends: {input index: Outcome}."""
    from .devices import batch_size_for

    outcomes: dict[int, Outcome] = {}
    todo = []
    for index, (source, stem) in enumerate(zip(inputs, output_stems(inputs, settings.out))):
        if not args.force and is_done(settings.out, stem, source):
            outcomes[index] = Outcome(str(source), "skipped", message="outputs exist (--force fits it again)")
        else:
            todo.append((index, source, stem))
    workers = min(args.workers or min(2, os.cpu_count() or 1), len(todo))
    batch_size = batch_size_for(device, args.batch_size)
    debug = getattr(args, "debug", False)
    started = time.perf_counter()
    ended = {False: 0, True: 0}  # inputs of this run that ended, by whether they failed

    def report(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if outcome.status == "failed":
            print(f"error: {outcome.source}: {outcome.message}", file=sys.stderr)
        for warning in outcome.warnings:
            print(f"warning: {outcome.source}: {warning}", file=sys.stderr)
        ended[outcome.status == "failed"] += 1
        print(progress_line(sum(ended.values()), ended[True], len(todo), started), file=sys.stderr)

    if settings.export and todo and args.ray is None and (batch_size > 1 or device.type == "cuda" or workers <= 1):
        start_rigged_exporter()  # fits in this process: Blender's import overlaps the first
    if args.ray is not None:
        from .scale_out import BatchSteps, ClusterError, fit_on_ray

        steps = BatchSteps(check_setup, fit_quietly, fit_together, failed_outcome, is_photo)
        try:
            fit_on_ray(steps, todo, settings, args, report)
        except ClusterError as error:
            raise UsageError(str(error)) from None
    elif batch_size > 1:  # a GPU: batches of scans, one after another in this process
        for first in range(0, len(todo), batch_size):
            for index, outcome in fit_together(todo[first : first + batch_size], settings, debug):
                report(index, outcome)
    elif device.type == "cuda" or workers <= 1:
        for index, source, stem in todo:
            report(index, fit_quietly(source, stem, settings, debug))
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=start_worker,
                                   initargs=(args.threads, os.getpid(), settings.export))  # fmt: skip
        try:
            futures = {pool.submit(fit_quietly, source, stem, settings, debug): (index, source) for index, source, stem in todo}
            for future in as_completed(futures):
                index, source = futures[future]
                try:
                    outcome = future.result()
                except Exception as error:  # the worker died (e.g. out of memory): that input failed
                    outcome = failed_outcome(str(source), error_message(error, debug))
                report(index, outcome)
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, queued inputs are dropped rather than fitted
    return outcomes


def start_worker(threads: int, parent: int, export: bool = False) -> None:
    """A batch worker's setup: torch threads, death with the batch's process `parent` (a killed batch must
    not leave workers fitting and writing to its folder) and, with `export`, its own rigged exporter, started
    now (it ends with the worker: its stdin closes)."""
    from .devices import set_torch_threads

    die_with_parent(parent)
    set_torch_threads(threads)
    if export:
        start_rigged_exporter()


def die_with_parent(parent: int) -> None:
    """End this process when `parent` (the pid that started it) ends: Linux's parent-death signal, else a
    thread watching the parent pid."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(EXIT_INTERRUPTED)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(EXIT_INTERRUPTED)


def collect_inputs(patterns: list[str]) -> list[Path]:
    """Files from folders (their scans and photos, sorted), glob patterns and plain paths, each once; the
    person masks of photos (photo_mask.png beside photo.png) are not inputs. UsageError for a path that does
    not exist or a folder / pattern with nothing to fit."""
    from .inputs.image import PHOTO_EXTENSIONS
    from .inputs.scan import SUPPORTED_EXTENSIONS

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            named = sorted(p for p in path.iterdir() if p.suffix.lower() in SUPPORTED_EXTENSIONS + PHOTO_EXTENSIONS)
            matches = [p for p in named if p.is_file()]
            for broken in (p for p in named if p.is_symlink() and not p.is_file()):  # a loop or a dangling link: say so
                try:
                    check_input_file(broken)
                except UsageError as problem:
                    print(f"warning: skipped {problem}", file=sys.stderr)
        elif any(character in pattern for character in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        else:
            check_input_file(path)
            matches = [path]
        if not path.is_file():  # folders and patterns: a photo's mask is not an input of its own
            matches = [m for m in matches if not is_mask_of_another_input(m)]
        if not matches:
            raise UsageError(f"no scans or photos in {pattern}")
        found += matches
    return list(dict.fromkeys(found))


def progress_line(ended: int, failed: int, total: int, started: float, width: int = 20) -> str:
    """[ended/total] a bar, how many failed and remain, the throughput and the time left."""
    elapsed = time.perf_counter() - started
    rate = ended / elapsed * 60 if elapsed > 0 else 0.0
    left = (total - ended) / rate * 60 if rate > 0 else 0.0
    filled = width * ended // max(total, 1)
    return (f"[{ended}/{total}] {'#' * filled}{'.' * (width - filled)} {failed} failed, {total - ended} remaining, "
            f"{rate:.1f} inputs/min, {int(left // 60)}:{int(left % 60):02d} left")  # fmt: skip


def summary_table(outcomes: list[Outcome]) -> str:
    width = max(len("file"), *(len(outcome.source) for outcome in outcomes))
    lines = [f"{'file':{width}s}  {'status':8s} {'fit':>11s} {'seconds':>8s}  note"]
    for outcome in outcomes:
        seconds = "-" if outcome.status == "skipped" else f"{outcome.seconds:.1f}"
        lines.append(f"{outcome.source:{width}s}  {outcome.status:8s} {outcome.quality_cell:>11s} {seconds:>8s}  {outcome.message}".rstrip())
    return "\n".join(lines)


def run_demo(args) -> int:
    from . import pipeline
    from .body import load_body_model
    from .outputs import write_preview

    settings = FitSettings(args.out, {"body": "anny"}, preview=False)  # the demo's preview is preview.png
    note_missing_rigged_export(settings, start=True)
    started = time.perf_counter()
    with output_folder(settings.out):
        scan = load_input_scan(SAMPLE_SCAN, settings.fit_options)
        result = pipeline.fit_scan(scan, **settings.fit_options)
        paths = write_outputs(SAMPLE_SCAN, SAMPLE_SCAN.stem, settings, result, scan).paths
        body = load_body_model(result.body_name)
        paths["preview"] = write_preview(args.out / "preview.png", result, body, preview_points(scan), title="LVD demo")
    print(f"fitted the sample scan {SAMPLE_SCAN} in {time.perf_counter() - started:.1f} s ({format_timings(result.timings)})")
    print(result.quality_label())
    print(f"error against the known ground truth: {sample_truth_error_mm(result.vertices_input):.1f} mm (mean vertex distance)")
    for kind, path in paths.items():
        print(f"  {kind:8s} {path}")
    return EXIT_OK


def sample_truth_error_mm(vertices_input) -> float:
    """Mean distance (mm) from fitted vertices (the sample scan's frame and units) to the sample's
    ground-truth body (sample_scan.json: its params in the model frame, and the scan file's units and up)."""
    import numpy as np

    from .body import BodyParams, load_body_model
    from .inputs.scan import METRES_PER_UNIT
    from .synth.scans import to_file_frame

    truth = json.loads(SAMPLE_SCAN.with_suffix(".json").read_text())
    body = load_body_model(truth["body"])
    params = BodyParams.from_numpy(truth["params"])
    vertices = body(params).vertices[0].detach().double().numpy()
    expected = to_file_frame(vertices, body.up_axis, units=truth["units"], up_axis=truth["up_axis"])
    distances = np.linalg.norm(np.asarray(vertices_input) - expected, axis=1)
    return float(distances.mean() * METRES_PER_UNIT[truth["units"]] * 1000)


def run_train(args) -> int:
    from .train import train

    config = train_config(args)
    checkpoint = train(config)
    print(f"use it with: lvd fit SCAN --body {config.body} --weights {checkpoint}")
    return EXIT_OK


def train_config(args):
    from .train import NETWORK_SIZES, TrainConfig

    given = dict(steps=args.steps, minutes=args.minutes, lr=args.lr, batch=args.batch, subset=args.subset, body_path=args.model_file,
                 workers=args.workers, network=dict(NETWORK_SIZES[args.size]) if args.size else None)  # fmt: skip
    out = args.out or Path("out") / f"train-{args.body}"
    return TrainConfig(body=args.body, out=str(out), device=args.device, precision=args.precision, threads=args.threads, **{k: v for k, v in given.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exiting:  # --help (0) or bad usage (2): argparse has printed why
        return int(exiting.code or 0)
    if hasattr(args, "threads"):
        from .devices import set_torch_threads

        set_torch_threads(args.threads)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as error:  # the core's errors: one line that says what to fix
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print(f"error: {type(error).__name__}: {one_line(error)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        close_rigged_exporter(wait=False)  # its files are written; Blender's exit need not delay the command's


if __name__ == "__main__":
    sys.exit(main())
