"""The `lvd` command: fit scans (one, or a batch), run the demo, train a scan network.

    lvd fit SCAN [options]          lvd batch DIR|GLOB ... [options]
    lvd demo [--out DIR]            lvd train --body NAME [options]

Commands only translate options into lvd_core calls and print what happened. Exit codes: 0 everything
fitted, 1 some input failed, 2 bad usage (options, unknown body, missing input), 130 interrupted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MASK_SUFFIX = "_mask"  # photo.png may come with its person mask photo_mask.png
PREVIEW_SCAN_POINTS = 20_000
DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_SCAN = DATA_DIR / "sample_scan.ply"


class UsageError(Exception):
    """Options that cannot work together or an input that is not there (exit code 2)."""


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

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser would otherwise reset `lvd --debug fit ...` to False.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of unexpected errors")

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=positive_int, default=1, metavar="N",
                         help="torch CPU threads per process (default: 1; the fit's many small operations are slower on more)")

    fitting = argparse.ArgumentParser(add_help=False)
    group = fitting.add_argument_group("fitting")
    group.add_argument("--body", default="anny", choices=BODY_MODEL_NAMES, help="body model to fit (default: anny)")
    group.add_argument("--model-file", metavar="PATH", help="the SMPL / MANO model file (licensed, not shipped)")
    group.add_argument("--weights", metavar="PATH", help="scan network checkpoint (default: the one shipped for --body)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available")
    group.add_argument("--units", choices=("m", "cm", "mm"), help="the scan's units (default: detected from its size)")
    group.add_argument("--up", choices=("y", "z"), help="the scan's up axis (default: detected)")
    group.add_argument("--no-refine", dest="refine", action="store_false", help="skip the refinement against the scan surface or the photo's person mask (faster)")
    group.add_argument("--iterations", type=positive_int, metavar="N", help="LVD descent iterations (default: 10)")
    group.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output folder (default: out)")
    group.add_argument("--no-export", dest="export", action="store_false", help="skip the rigged .glb/.fbx (needs Blender's bpy)")
    group.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True, help="write <name>_preview.png")

    parser = argparse.ArgumentParser(
        prog="lvd", parents=[common], description="Learned Vertex Descent: fit a rigged, posed, shaped body model to scans."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit", parents=[common, threads, fitting], help="fit one scan", description="Fit one scan (or photo) and write its outputs."
    )
    fit.add_argument("input", type=Path, help="scan file (.obj .ply .stl .off .glb .gltf) or photo (.png .jpg .webp; its "
                                              "person mask NAME_mask.png beside it is used when there, else found automatically)")  # fmt: skip
    fit.set_defaults(run=run_fit)

    batch = commands.add_parser(
        "batch",
        parents=[common, threads, fitting],
        help="fit many scans",
        description="Fit many scans; resumable (inputs whose outputs exist are skipped), one bad file does not stop the rest.",
    )
    batch.add_argument("inputs", nargs="+", metavar="DIR|GLOB|FILE", help="folders (their scans and photos), glob patterns or files")
    batch.add_argument("--workers", type=positive_int, metavar="N", help="CPU worker processes (default: min(2, CPU count))")
    batch.add_argument("--batch-size", type=positive_int, metavar="N",
                       help=f"scans fitted together, the descent and the body fit batched (default: {GPU_BATCH} on a GPU; "
                            "1 on the CPU, where worker processes run in parallel instead)")  # fmt: skip
    batch.add_argument("--force", action="store_true", help="fit again inputs whose outputs already exist")
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
    options = dict(body=args.body, device=args.device, units=args.units, up=args.up, refine=args.refine)
    optional = dict(model_path=args.model_file, weights=args.weights, iterations=args.iterations)
    options.update({name: value for name, value in optional.items() if value is not None})
    return FitSettings(args.out, options, args.export, args.preview)


def check_body_and_device(options: dict):
    """The torch device the fits will use; UsageError when the body model or the device cannot be used."""
    from .body import BodyModelError, load_body_model
    from .devices import pick_device

    try:
        load_body_model(options["body"], options.get("model_path"))
        return pick_device(options["device"])
    except (BodyModelError, RuntimeError) as error:
        raise UsageError(one_line(error)) from None


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


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_EXTENSIONS


def fit_input(source: Path, stem: str, settings: FitSettings) -> tuple:
    """Fit one scan or photo and write its outputs: (FitResult, {kind: path}). Core errors propagate."""
    from . import pipeline

    options = settings.fit_options
    if is_photo(source):
        from .inputs.image import load_image

        result = pipeline.fit_photo(load_image(source), given_mask(source), **options)
    else:
        result = pipeline.fit_scan(source, **options)
    return result, write_outputs(source, stem, settings, result)


def given_mask(photo: Path) -> Path | None:
    """The person mask that comes with a photo, <stem>_mask.<any photo extension> beside it (the convention of
    the sample photos); None: the person is found automatically."""
    for extension in PHOTO_EXTENSIONS:
        candidate = photo.with_name(f"{photo.stem}{MASK_SUFFIX}{extension}")
        if candidate.is_file():
            return candidate
    return None


def is_mask_of_another_input(path: Path) -> bool:
    """A photo's person mask (<stem>_mask.png beside <stem>.<photo extension>): not an input of its own."""
    if not is_photo(path) or not path.stem.endswith(MASK_SUFFIX):
        return False
    photo_stem = path.stem[: -len(MASK_SUFFIX)]
    return any(path.with_name(photo_stem + extension).is_file() for extension in PHOTO_EXTENSIONS)


def write_outputs(source: Path, stem: str, settings: FitSettings, result) -> dict:
    """Write a fitted input's files (lvd_core.outputs.write_result, with the scan's points in its preview)."""
    from .body import load_body_model
    from .outputs import write_result

    body = load_body_model(result.body_name, settings.fit_options.get("model_path"))
    scan_points = None
    if settings.preview and not is_photo(source):
        started = time.perf_counter()
        scan_points = preview_points(source, result, body)
        result.timings["preview_scan"] = round(time.perf_counter() - started, 3)
    return write_result(result, settings.out, stem, body=body, scan_points=scan_points, export=settings.export, preview=settings.preview)


def preview_points(source: Path, result, body):
    """A sample of the scan's surface points for the preview, read as the fit read them."""
    from .canonical import body_kind
    from .inputs.scan import load_scan
    from .outputs import input_up_axis

    up = input_up_axis(result, body)
    return load_scan(source, units=result.units, up=up, kind=body_kind(body), max_points=PREVIEW_SCAN_POINTS).points


def fit_quietly(source: Path, stem: str, settings: FitSettings, debug: bool = False) -> Outcome:
    """fit_input that turns any error into a failed Outcome (a batch goes on with the next input): the core's
    one-line message, else the exception's first line (its traceback with `debug`)."""
    started = time.perf_counter()
    try:
        result, paths = fit_input(source, stem, settings)
    except Exception as error:
        return Outcome(str(source), "failed", seconds=time.perf_counter() - started, message=error_message(error, debug))
    return fitted_outcome(source, result, paths, time.perf_counter() - started)


def fitted_outcome(source: Path, result, paths: dict, seconds: float) -> Outcome:
    return Outcome(str(source), "fitted", result.residual_mm, seconds, timings=result.timings,
                   paths={kind: str(path) for kind, path in paths.items()}, quality=result.quality_label(),
                   quality_cell=result.quality_label(short=True), doubtful=result.doubtful)  # fmt: skip


def fit_together(todo: list[tuple[int, Path, str]], settings: FitSettings, debug: bool = False) -> list[tuple[int, Outcome]]:
    """(index, source, stem) inputs -> (index, Outcome): the scans fitted in one batch (pipeline.fit_scans:
    the descent and the body fit batched, as a GPU wants), their outputs written one by one; photos one at a
    time. Each scan's seconds are its share of the batch."""
    from . import pipeline

    photos = [item for item in todo if is_photo(item[1])]
    scans = [item for item in todo if not is_photo(item[1])]
    outcomes = [(index, fit_quietly(source, stem, settings, debug)) for index, source, stem in photos]
    started = time.perf_counter()
    try:
        results = pipeline.fit_scans([source for _, source, _ in scans], **settings.fit_options) if scans else []
    except Exception as error:  # a problem of the options: no scan of the batch could be fitted
        results = [error] * len(scans)
    share = (time.perf_counter() - started) / max(len(scans), 1)
    for (index, source, stem), result in zip(scans, results):
        try:
            if isinstance(result, Exception):
                raise result
            outcome = fitted_outcome(source, result, write_outputs(source, stem, settings, result), share)
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


def note_missing_rigged_export(settings: FitSettings) -> None:
    """Say once, before fitting, why the rigged files will not be written when they were asked for."""
    from .rigged_export import bpy_unavailable_reason

    reason = settings.export and bpy_unavailable_reason()
    if reason:
        print(f"note: no rigged .glb/.fbx: {reason}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# commands


def run_fit(args) -> int:
    if not args.input.is_file():
        raise UsageError(f"no such file: {args.input}")
    settings = fit_settings(args)
    check_body_and_device(settings.fit_options)
    note_missing_rigged_export(settings)
    outcome = fit_quietly(args.input, args.input.stem, settings, getattr(args, "debug", False))
    if outcome.status == "failed":
        print(f"error: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"fitted {args.input} in {outcome.seconds:.1f} s ({format_timings(outcome.timings)})")
    print(outcome.quality)
    print("wrote " + ", ".join(outcome.paths.values()))
    return EXIT_OK


def run_batch(args) -> int:
    from .devices import batch_size_for

    inputs = collect_inputs(args.inputs)
    settings = fit_settings(args)
    device = check_body_and_device(settings.fit_options)
    note_missing_rigged_export(settings)
    outcomes: dict[int, Outcome] = {}
    todo = []
    for index, (source, stem) in enumerate(zip(inputs, unique_stems(inputs))):
        if (settings.out / f"{stem}.json").is_file() and not args.force:  # written last: the outputs are complete
            outcomes[index] = Outcome(str(source), "skipped", message="outputs exist (--force fits it again)")
        else:
            todo.append((index, source, stem))
    workers = min(args.workers or min(2, os.cpu_count() or 1), len(todo))
    batch_size = batch_size_for(device, args.batch_size)
    debug = getattr(args, "debug", False)
    started = time.perf_counter()

    def report(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if outcome.status == "failed":
            print(f"error: {outcome.source}: {outcome.message}", file=sys.stderr)
        print(progress_line(len(outcomes) - (len(inputs) - len(todo)), len(todo), started), file=sys.stderr)

    if batch_size > 1:  # a GPU: batches of scans, one after another in this process
        for first in range(0, len(todo), batch_size):
            for index, outcome in fit_together(todo[first : first + batch_size], settings, debug):
                report(index, outcome)
    elif device.type == "cuda" or workers <= 1:
        for index, source, stem in todo:
            report(index, fit_quietly(source, stem, settings, debug))
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=set_torch_threads, initargs=(args.threads,))
        try:
            futures = {pool.submit(fit_quietly, source, stem, settings, debug): (index, source) for index, source, stem in todo}
            for future in as_completed(futures):
                index, source = futures[future]
                try:
                    outcome = future.result()
                except Exception as error:  # the worker died (e.g. out of memory): that input failed
                    outcome = Outcome(str(source), "failed", message=error_message(error, debug))
                report(index, outcome)
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, queued inputs are dropped rather than fitted
    print(summary_table([outcomes[index] for index in range(len(inputs))]))
    failed = sum(outcome.status == "failed" for outcome in outcomes.values())
    fitted = sum(outcome.status == "fitted" for outcome in outcomes.values())
    doubtful = sum(outcome.doubtful for outcome in outcomes.values())
    check = f" ({doubtful} marked doubtful, \", check\" above: the network may have misread the pose)" if doubtful else ""
    print(f"fitted {fitted}{check}, skipped {len(inputs) - fitted - failed} (already done), failed {failed}; outputs in {settings.out}")
    return EXIT_FAILED if failed else EXIT_OK


def set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def collect_inputs(patterns: list[str]) -> list[Path]:
    """Files from folders (their scans and photos, sorted), glob patterns and plain paths, each once; the
    person masks of photos (photo_mask.png beside photo.png) are not inputs. UsageError for a path that does
    not exist or a folder / pattern with nothing to fit."""
    from .inputs.scan import SUPPORTED_EXTENSIONS

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in SUPPORTED_EXTENSIONS + PHOTO_EXTENSIONS)
        elif any(character in pattern for character in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        elif path.is_file():
            matches = [path]
        else:
            raise UsageError(f"no such file or folder: {pattern}")
        if not path.is_file():  # folders and patterns: a photo's mask is not an input of its own
            matches = [m for m in matches if not is_mask_of_another_input(m)]
        if not matches:
            raise UsageError(f"no scans or photos in {pattern}")
        found += matches
    return list(dict.fromkeys(found))


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names: each input's stem, with -2, -3 ... for later inputs of the same stem (stable, so a
    re-run finds its outputs again)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems


def progress_line(done: int, total: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    rate = done / elapsed * 60 if elapsed > 0 else 0.0
    left = (total - done) / rate * 60 if rate > 0 else 0.0
    return f"[{done}/{total}] {rate:.1f} inputs/min, {int(left // 60)}:{int(left % 60):02d} left"


def summary_table(outcomes: list[Outcome]) -> str:
    width = max(len("file"), *(len(outcome.source) for outcome in outcomes))
    lines = [f"{'file':{width}s}  {'status':8s} {'fit':>11s} {'seconds':>8s}  note"]
    for outcome in outcomes:
        seconds = "-" if outcome.status == "skipped" else f"{outcome.seconds:.1f}"
        lines.append(f"{outcome.source:{width}s}  {outcome.status:8s} {outcome.quality_cell:>11s} {seconds:>8s}  {outcome.message}".rstrip())
    return "\n".join(lines)


def run_demo(args) -> int:
    from .body import load_body_model
    from .outputs import write_preview

    settings = FitSettings(args.out, {}, preview=False)  # the demo's preview is preview.png
    note_missing_rigged_export(settings)
    started = time.perf_counter()
    result, paths = fit_input(SAMPLE_SCAN, SAMPLE_SCAN.stem, settings)
    body = load_body_model(result.body_name)
    scan_points = preview_points(SAMPLE_SCAN, result, body)
    paths["preview"] = write_preview(args.out / "preview.png", result, body, scan_points, title="LVD demo")
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


if __name__ == "__main__":
    sys.exit(main())
