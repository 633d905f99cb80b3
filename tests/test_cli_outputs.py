"""What `lvd fit` / `lvd batch` leave in --out when things go wrong: whole outputs or none, resume only on a
complete record of the same input, distinct names for inputs of the same stem, one run per folder, workers that
die with the batch, the rigged export out of the fitting processes. Fits are one real fit of the sample scan,
replayed (pipeline.fit_scan patched), except where worker processes are the point."""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trimesh

from lvd_core import cli, pipeline
from lvd_core.cli import SAMPLE_SCAN, output_folder, rigged_export_unavailable

from test_cli import run, write_sample_copy

needs_bpy = pytest.mark.skipif(rigged_export_unavailable() is not None, reason="Blender's bpy is not installed")
NO_BLENDER = ["--no-refine", "--no-export", "--workers", "1"]


@pytest.fixture(scope="module")
def sample_result():
    return pipeline.fit_scan(SAMPLE_SCAN, refine=False)


@pytest.fixture
def replayed(sample_result, monkeypatch):
    """pipeline.fit_scan returns the sample's fit at once; the list counts the fits."""
    calls = []
    monkeypatch.setattr(pipeline, "fit_scan", lambda *a, **k: calls.append(a) or copy.deepcopy(sample_result))
    return calls


def folder_state(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def scans_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_SCAN, folder / name)
    return folder


def fail_writing(monkeypatch, suffix: str) -> None:
    """Every mesh export to a file ending in `suffix` fails as on a full disk, after writing a few bytes."""
    real_export = trimesh.Trimesh.export

    def export(mesh, file_obj=None, *args, **kwargs):
        if str(file_obj).endswith(suffix):
            Path(file_obj).write_bytes(b"ply\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(mesh, file_obj, *args, **kwargs)

    monkeypatch.setattr(trimesh.Trimesh, "export", export)


# ---------------------------------------------------------------------------------------------------------
# whole or nothing


@pytest.mark.slow
def test_a_full_disk_leaves_nothing_and_the_rerun_fits_it(tmp_path, replayed, monkeypatch):
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    with monkeypatch.context() as patch:
        fail_writing(patch, ".ply")
        code, _, stderr = run(["batch", str(scans), "--out", str(out), *NO_BLENDER])
    assert code == 1 and "No space left on device" in stderr
    assert folder_state(out) == {}  # no half-written .json (or anything) a resume would trust
    code, stdout, _ = run(["batch", str(scans), "--out", str(out), *NO_BLENDER])
    assert code == 0 and "fitted 1," in stdout and (out / "person.json").is_file()


@pytest.mark.slow
def test_a_failed_refit_leaves_the_earlier_outputs_as_they_were(tmp_path, replayed, monkeypatch):
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    assert run(["batch", str(scans), "--out", str(out), *NO_BLENDER])[0] == 0
    before = folder_state(out)
    fail_writing(monkeypatch, ".ply")
    code, _, _ = run(["batch", str(scans), "--out", str(out), "--force", *NO_BLENDER])
    assert code == 1 and folder_state(out) == before


def test_a_refit_with_fewer_outputs_removes_the_old_ones(tmp_path, replayed):
    """Never a mix of two fits: a preview of the first fit must not stay beside the second's files."""
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    assert run(["batch", str(scans), "--out", str(out), *NO_BLENDER])[0] == 0
    assert (out / "person_preview.png").is_file()
    assert run(["batch", str(scans), "--out", str(out), "--force", "--no-preview", *NO_BLENDER])[0] == 0
    assert not (out / "person_preview.png").exists()
    assert set(json.loads((out / "person.json").read_text())["outputs"]) == {"npz", "obj", "ply", "json"}


@pytest.mark.slow
def test_the_json_records_the_input_the_tool_and_the_weights(tmp_path, replayed):
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    assert run(["fit", str(scans / "person.ply"), "--out", str(out), *NO_BLENDER[:2]])[0] == 0
    record = json.loads((out / "person.json").read_text())
    assert record["input"] == {"path": str((scans / "person.ply").resolve()), "size": SAMPLE_SCAN.stat().st_size,
                               "sha256": cli.file_sha256(SAMPLE_SCAN)}  # fmt: skip
    assert record["lvd_version"] and len(record["weights_sha256"]) == 64
    assert record["outputs"]["json"] == "person.json" and not list(out.glob(".*"))


# ---------------------------------------------------------------------------------------------------------
# resume


def test_resume_refits_a_truncated_record_and_a_changed_input(tmp_path, replayed):
    scans, out = scans_folder(tmp_path, "a.ply", "b.ply", "c.ply"), tmp_path / "out"
    argv = ["batch", str(scans), "--out", str(out), "--no-preview", *NO_BLENDER]
    assert run(argv)[0] == 0 and len(replayed) == 3
    text = (out / "a.json").read_text()
    (out / "a.json").write_text(text[: len(text) // 2])  # what a full disk left before writes were atomic
    data = bytearray((scans / "b.ply").read_bytes())
    data[data.index(b"end_header\n") + 11] ^= 1  # the first vertex's lowest byte: same size, other content
    (scans / "b.ply").write_bytes(bytes(data))
    code, stdout, _ = run(argv)
    assert code == 0 and "fitted 2, skipped 1" in stdout and len(replayed) == 5


@pytest.mark.slow
def test_inputs_of_the_same_name_in_other_folders_get_their_own_outputs(tmp_path, replayed):
    scans, out = scans_folder(tmp_path, "a/x.ply", "b/x.ply"), tmp_path / "out"
    assert run(["batch", str(scans / "b"), "--out", str(out), *NO_BLENDER])[0] == 0
    code, stdout, _ = run(["batch", str(scans / "a"), "--out", str(out), *NO_BLENDER])
    assert code == 0 and "fitted 1, skipped 0" in stdout  # not skipped as done because b/x.ply wrote x.json
    recorded = {stem: json.loads((out / f"{stem}.json").read_text())["input"]["path"] for stem in ("x", "x-2")}
    assert recorded == {"x": str((scans / "b" / "x.ply").resolve()), "x-2": str((scans / "a" / "x.ply").resolve())}
    code, stdout, _ = run(["batch", str(scans / "a"), str(scans / "b"), "--out", str(out), *NO_BLENDER])
    assert code == 0 and "fitted 0, skipped 2" in stdout


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused(tmp_path, replayed):
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    with output_folder(out):
        code, _, stderr = run(["batch", str(scans), "--out", str(out), *NO_BLENDER])
    assert code == 2 and "another lvd run is writing to" in stderr and not replayed
    assert run(["batch", str(scans), "--out", str(out), *NO_BLENDER])[0] == 0  # released with its holder


# ---------------------------------------------------------------------------------------------------------
# checks before the fit, messages, exit codes


def test_an_unwritable_out_is_refused_before_fitting(tmp_path, replayed):
    (tmp_path / "file").write_text("")
    code, _, stderr = run(["fit", str(SAMPLE_SCAN), "--out", str(tmp_path / "file"), *NO_BLENDER[:2]])
    assert code == 2 and "is a file, not a folder" in stderr and not replayed
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who may write anywhere")
    code, _, stderr = run(["fit", str(SAMPLE_SCAN), "--out", str(locked / "sub"), *NO_BLENDER[:2]])
    assert code == 2 and stderr.startswith("error: cannot write to --out") and not replayed


def test_folders_and_link_loops_are_named_as_such(tmp_path):
    loop = tmp_path / "loop.ply"
    loop.symlink_to(loop)
    code, _, stderr = run(["fit", str(loop)])
    assert code == 2 and "symbolic link loop" in stderr
    code, _, stderr = run(["fit", str(tmp_path)])
    assert code == 2 and "is a folder, not a scan or photo" in stderr
    code, _, stderr = run(["batch", str(loop)])
    assert code == 2 and "symbolic link loop" in stderr
    # Inside a folder given to a batch, the loop is named and skipped; the folder's other inputs are collected.
    from lvd_core.cli import collect_inputs

    shutil.copy(SAMPLE_SCAN, tmp_path / "scan.ply")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert collect_inputs([str(tmp_path)]) == [tmp_path / "scan.ply"]
    assert f"warning: skipped {loop} is a symbolic link loop" in err.getvalue()


def test_bad_weights_and_bad_model_file_are_both_setup_errors(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, _, stderr = run(["fit", str(SAMPLE_SCAN), "--out", str(tmp_path), "--weights", str(tmp_path / "bad.pt")])
    assert code == 2 and stderr.count("\n") == 1
    code, _, stderr = run(["fit", str(SAMPLE_SCAN), "--out", str(tmp_path), "--body", "smpl", "--model-file", str(tmp_path / "bad.pt")])
    assert code == 2 and stderr.count("\n") == 1
    code, stdout, _ = run(["fit", "--help"])
    assert code == 0 and "1 an input could not be read or fitted; 2 usage or setup" in " ".join(stdout.split())


def test_an_absurd_residual_is_an_error_not_a_result(tmp_path, sample_result, monkeypatch):
    """`--units m` on a centimetre scan used to end with a 42,881 mm residual and exit 0."""
    absurd = copy.deepcopy(sample_result)
    absurd.residual_mm = 42_881.0
    monkeypatch.setattr(pipeline, "fit_scan", lambda *a, **k: copy.deepcopy(absurd))
    code, _, stderr = run(["fit", str(SAMPLE_SCAN), "--out", str(tmp_path), *NO_BLENDER[:2]])
    assert code == 1 and "the fit is off: the scan lies 42881 mm (median)" in stderr
    assert not list(tmp_path.iterdir())


def test_a_unitless_scan_is_a_warning(tmp_path, sample_result, monkeypatch):
    write_sample_copy(tmp_path / "km.ply", 0.001, "y")
    unitless = copy.deepcopy(sample_result)
    unitless.units = "unitless"
    monkeypatch.setattr(pipeline, "fit_scan", lambda *a, **k: copy.deepcopy(unitless))
    code, _, stderr = run(["fit", str(tmp_path / "km.ply"), "--out", str(tmp_path / "out"), *NO_BLENDER[:2]])
    assert code == 0 and f"warning: {tmp_path / 'km.ply'}: units unknown" in stderr and "pass --units" in stderr


# ---------------------------------------------------------------------------------------------------------
# the rigged export and worker processes


def test_a_failed_rigged_export_is_a_warning_on_its_line_and_in_the_summary(tmp_path, replayed, monkeypatch):
    monkeypatch.setattr(cli, "rigged_export_unavailable", lambda: None)
    monkeypatch.setattr(cli, "RIGGED_EXPORTER", "lvd_core.no_such_exporter")
    scans, out = scans_folder(tmp_path, "person.ply"), tmp_path / "out"
    code, stdout, stderr = run(["batch", str(scans), "--out", str(out), "--no-refine", "--no-preview", "--workers", "1"])
    assert code == 0 and f"warning: {scans / 'person.ply'}: no rigged .glb/.fbx: Blender's export failed" in stderr
    assert "1 with warnings" in stdout and "no rigged" in stdout  # the summary table's note and its count
    assert not list(out.glob("*.glb")) and (out / "person.json").is_file()


@needs_bpy
@pytest.mark.slow
def test_batch_workers_export_after_the_parent_imported_bpy(tmp_path):
    """Blender's own folders on the parent's sys.path (bpy imported, as in Blender or this test) once left every
    worker unable to import bpy: no .glb/.fbx, no word, exit 0."""
    import bpy  # noqa: F401

    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    write_sample_copy(scans / "one.ply", 1.0, "y")
    write_sample_copy(scans / "two.ply", 1000.0, "z")
    code, stdout, stderr = run(["batch", str(scans), "--out", str(out), "--no-refine", "--no-preview", "--workers", "2"])
    assert code == 0 and "warning" not in stderr, stderr
    for stem in ("one", "two"):
        assert (out / f"{stem}.glb").stat().st_size > 0 and (out / f"{stem}.fbx").stat().st_size > 0


@pytest.mark.slow
def test_workers_die_with_the_batch(tmp_path):
    """kill -9 of a batch's main process once left its workers fitting, then hanging at ~550 MB each."""
    script = textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        from lvd_core.cli import start_worker

        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=start_worker, initargs=(1, os.getpid()))
            print(pool.submit(os.getpid).result(), flush=True)
            pool.submit(time.sleep, 120)
            time.sleep(120)
    """)
    (tmp_path / "batch.py").write_text(script)
    environment = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).resolve().parents[1]))
    batch = subprocess.Popen([sys.executable, str(tmp_path / "batch.py")], stdout=subprocess.PIPE, text=True, env=environment)
    worker = int(batch.stdout.readline())
    batch.send_signal(signal.SIGKILL)
    batch.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_alive(worker):
        time.sleep(0.1)
    assert not process_alive(worker)


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has died, its parent not reaped it
    except FileNotFoundError:
        return False


def test_the_preview_reuses_the_loaded_scan(tmp_path, replayed, monkeypatch):
    """A 5 M-face scan used to be read twice (the preview read it again: 15.7 s of 39 s)."""
    from lvd_core.inputs import scan as scan_module

    reads = []
    real_read = scan_module.read_geometry
    monkeypatch.setattr(scan_module, "read_geometry", lambda source: reads.append(source) or real_read(source))
    assert run(["fit", str(SAMPLE_SCAN), "--out", str(tmp_path), *NO_BLENDER[:2]])[0] == 0
    assert len(reads) == 1 and (tmp_path / "sample_scan_preview.png").is_file()


def test_a_photo_without_a_person_is_named(tmp_path):
    from PIL import Image

    Image.new("RGB", (320, 240), (128, 128, 128)).save(tmp_path / "grey.png")
    code, _, stderr = run(["fit", str(tmp_path / "grey.png"), "--out", str(tmp_path / "out"), *NO_BLENDER[:2]])
    assert code == 1 and f"no person found in {tmp_path / 'grey.png'}" in stderr
