"""`lvd batch --ray`: the batch on a Ray cluster (a local one started here, 2 CPUs) gives the local batch's
outputs, isolates a bad input, retries the call of a worker killed mid-fit and resumes on a rerun; Ray is
imported only when --ray is given, and its absence is one line with the install command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lvd_core import cli
from lvd_core.cli import SAMPLE_SCAN

from test_cli import run

ray = pytest.importorskip("ray")

FAST = ["--no-refine", "--no-export", "--no-preview", "--iterations", "2"]
CRASH_PREFIX = "crash_once"  # inputs whose first fit kills its worker process (kill_first_fits_of_marked_inputs)


def kill_first_fits_of_marked_inputs() -> None:
    """Ray's worker_process_setup_hook: a worker about to fit an input named crash_once* dies as if killed
    (SIGKILL), the first time only (a marker file beside the input remembers)."""
    from lvd_core import cli as worker_cli

    fit_quietly = worker_cli.fit_quietly

    def fit_or_die(source, stem, settings, debug=False):
        marker = Path(source).with_suffix(".killed")
        if Path(source).stem.startswith(CRASH_PREFIX) and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return fit_quietly(source, stem, settings, debug)

    worker_cli.fit_quietly = fit_or_die


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs and its files in a temporary folder, its workers armed with the hook."""
    address = os.environ.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    # the hook is pickled by value: the workers do not see this tests folder
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    source_root = str(Path(cli.__file__).resolve().parents[1])  # workers import the lvd_core under test
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             runtime_env={"env_vars": {"PYTHONPATH": source_root}, "worker_process_setup_hook": kill_first_fits_of_marked_inputs})  # fmt: skip
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    """Four inputs on the cluster: two scans, a scan whose first worker is killed, and a file that is no mesh."""
    folder = tmp_path_factory.mktemp("scans")
    for name in ("a.ply", "b.ply", f"{CRASH_PREFIX}.ply"):
        shutil.copy(SAMPLE_SCAN, folder / name)
    (folder / "bad.ply").write_text("not a mesh\n")
    out = tmp_path_factory.mktemp("out")
    code, stdout, stderr = run(["batch", str(folder), "--out", str(out), *FAST, "--ray"])
    return folder, out, code, stdout, stderr


def summary_rows(stdout: str) -> dict[str, str]:
    """{input file name: status} from the summary table."""
    rows = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0].endswith(".ply")]
    return {Path(row[0]).name: row[1] for row in rows}


@pytest.mark.slow
def test_ray_batch_fits_good_inputs_and_lists_the_bad_one(first_run):
    folder, out, code, stdout, stderr = first_run
    assert code == cli.EXIT_FAILED, stderr
    assert summary_rows(stdout) == {"a.ply": "fitted", "b.ply": "fitted", "bad.ply": "failed", f"{CRASH_PREFIX}.ply": "fitted"}
    assert f"error: {folder / 'bad.ply'}: cannot read bad.ply" in stderr
    assert "[4/4] ####################" in stderr and "1 failed, 0 remaining" in stderr and "inputs/min" in stderr
    for stem in ("a", "b", CRASH_PREFIX):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["input"]["path"] == str((folder / f"{stem}.ply").resolve())
        assert sorted(record["outputs"].values()) == sorted([f"{stem}.npz", f"{stem}_body.obj", f"{stem}_body.ply", f"{stem}.json"])
        assert cli.is_done(out, stem, folder / f"{stem}.ply")
    assert not (out / "bad.json").exists() and not list(out.glob(".*"))


@pytest.mark.slow
def test_ray_batch_retries_the_fit_of_a_killed_worker(first_run):
    folder, out, _, stdout, _ = first_run
    assert (folder / f"{CRASH_PREFIX}.killed").exists()  # its first worker died mid-call ...
    assert summary_rows(stdout)[f"{CRASH_PREFIX}.ply"] == "fitted"  # ... and the call ran again on a new one


@pytest.mark.slow
def test_ray_batch_rerun_skips_what_is_done(first_run):
    folder, out, _, _, _ = first_run
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    code, stdout, stderr = run(["batch", str(folder), "--out", str(out), *FAST, "--ray"])
    assert code == cli.EXIT_FAILED, stderr
    assert summary_rows(stdout) == {"a.ply": "skipped", "b.ply": "skipped", "bad.ply": "failed", f"{CRASH_PREFIX}.ply": "skipped"}
    assert "fitted 0, skipped 3 (already done), failed 1" in stdout
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


def test_ray_is_imported_only_for_ray_batches():
    probe = "import sys; from lvd_core import cli; cli.build_parser().parse_args(['batch', 'x', '--ray']); print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ray_missing_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, stderr = run(["batch", str(SAMPLE_SCAN), "--out", str(tmp_path), *FAST, "--ray"])
    assert code == cli.EXIT_USAGE
    assert stderr.strip().splitlines()[-1] == "error: --ray needs Ray: pip install ray==2.60.0 (or lvd-core[ray])"


def test_ray_address_that_looks_like_an_input_is_refused(tmp_path):
    code, _, stderr = run(["batch", "--ray", str(tmp_path), str(SAMPLE_SCAN), "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE and "expected auto, local, HOST:PORT or ray://HOST:PORT" in stderr
