"""`lvd batch --ray`: the batch on a Ray cluster (a local one started here, 2 CPUs) gives the local batch's
outputs, isolates a bad input, retries the call of a worker killed mid-fit, fails only the input that kills
every worker, and resumes on a rerun; Ray is imported only when --ray is given, and its absence is one line
with the install command. Worker deaths are injected by a Ray worker setup hook (kill_workers_on_marked_inputs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lvd_core import cli
from lvd_core.cli import SAMPLE_SCAN
from lvd_core.scale_out import RETRIES, BatchSteps, FitWorker

from test_cli import run

ray = pytest.importorskip("ray")

FAST = ["--no-refine", "--no-export", "--no-preview", "--iterations", "2"]
# inputs whose first fit, or every fit, kills its worker process; one whose fit presses Ctrl-C in the batch
# command (kill_workers_on_marked_inputs)
KILLED_ONCE, KILLED_ALWAYS, PRESSES_CTRL_C = "killed_once", "killed_always", "presses_ctrl_c"
DRIVER_PID = "LVD_TEST_DRIVER_PID"  # the tests' process, which runs the batch commands


def kill_workers_on_marked_inputs() -> None:
    """Ray's worker_process_setup_hook: a worker about to fit an input named killed_once dies as if killed
    (SIGKILL) the first time (a marker file beside the input remembers), one about to fit killed_always every
    time; one about to fit presses_ctrl_c sends SIGINT to the batch command and waits to be stopped."""
    from lvd_core import cli as worker_cli

    fit_quietly = worker_cli.fit_quietly

    def fit_or_die(source, stem, settings, debug=False):
        marker = Path(source).with_suffix(".killed")
        if Path(source).stem == KILLED_ALWAYS or (Path(source).stem == KILLED_ONCE and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if Path(source).stem == PRESSES_CTRL_C:
            os.kill(int(os.environ[DRIVER_PID]), signal.SIGINT)
            time.sleep(120)  # a fit in flight until the batch's Ctrl-C handling kills this worker
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
             runtime_env={"env_vars": {"PYTHONPATH": source_root, DRIVER_PID: str(os.getpid())}, "worker_process_setup_hook": kill_workers_on_marked_inputs})  # fmt: skip
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    """Five inputs on the cluster: two scans, a scan whose first worker is killed, one that kills every worker
    fitting it, and a file that is no mesh."""
    folder = tmp_path_factory.mktemp("scans")
    for name in ("a.ply", "b.ply", f"{KILLED_ONCE}.ply", f"{KILLED_ALWAYS}.ply"):
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
    assert summary_rows(stdout) == {"a.ply": "fitted", "b.ply": "fitted", "bad.ply": "failed", f"{KILLED_ONCE}.ply": "fitted",
                                    f"{KILLED_ALWAYS}.ply": "failed"}  # fmt: skip
    assert f"error: {folder / 'bad.ply'}: cannot read bad.ply" in stderr
    assert "[5/5] ####################" in stderr and "2 failed, 0 remaining" in stderr and "inputs/min" in stderr
    for stem in ("a", "b", KILLED_ONCE):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["input"]["path"] == str((folder / f"{stem}.ply").resolve())
        assert sorted(record["outputs"].values()) == sorted([f"{stem}.npz", f"{stem}_body.obj", f"{stem}_body.ply", f"{stem}.json"])
        assert cli.is_done(out, stem, folder / f"{stem}.ply")
    assert not (out / "bad.json").exists() and not list(out.glob(".*"))


@pytest.mark.slow
def test_ray_batch_retries_a_killed_worker_and_isolates_an_input_that_always_kills_it(first_run):
    folder, out, _, stdout, stderr = first_run
    assert (folder / f"{KILLED_ONCE}.killed").exists()  # its first worker died mid-call ...
    assert summary_rows(stdout)[f"{KILLED_ONCE}.ply"] == "fitted"  # ... and the call ran again on a restarted one
    [line] = [line for line in stderr.splitlines() if line.startswith(f"error: {folder / KILLED_ALWAYS}.ply")]
    assert f"its Ray worker died ({RETRIES + 1} tries)" in line
    assert not list(out.glob(f"{KILLED_ALWAYS}*"))


@pytest.mark.slow
def test_ray_batch_rerun_skips_what_is_done(first_run):
    folder, out, _, _, _ = first_run
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    inputs = [str(folder / name) for name in ("a.ply", "b.ply", f"{KILLED_ONCE}.ply", "bad.ply")]  # the first run's but the killer
    code, stdout, stderr = run(["batch", *inputs, "--out", str(out), *FAST, "--ray"])
    assert code == cli.EXIT_FAILED, stderr
    assert summary_rows(stdout) == {"a.ply": "skipped", "b.ply": "skipped", "bad.ply": "failed", f"{KILLED_ONCE}.ply": "skipped"}
    assert "fitted 0, skipped 3 (already done), failed 1" in stdout
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


def fit_worker_titles() -> dict[int, bytes]:
    """{pid: process title} of the Ray FitWorker processes under this process (which started the cluster)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
            if entry.name.isdigit() and b"FitWorker" in title and is_descendant(int(entry.name)):
                found[int(entry.name)] = title
        except OSError:  # it ended meanwhile
            continue
    return found


def is_descendant(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes in /proc")
def test_ray_batch_ctrl_c_stops_the_workers_and_writes_nothing(ray_cluster, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(SAMPLE_SCAN, folder / f"{PRESSES_CTRL_C}.ply")  # Ctrl-C is pressed once its fit has begun
    code, _, stderr = run(["batch", str(folder), "--out", str(tmp_path / "out"), *FAST, "--ray"])
    assert code == cli.EXIT_INTERRUPTED and stderr.strip().endswith("interrupted")
    assert list((tmp_path / "out").iterdir()) == []
    deadline = time.monotonic() + 30
    while fit_worker_titles() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fit_worker_titles() == {}


@pytest.mark.slow
def test_ray_batch_refuses_more_threads_than_any_node_has(ray_cluster, tmp_path):
    code, _, stderr = run(["batch", str(SAMPLE_SCAN), "--out", str(tmp_path), *FAST, "--threads", "3", "--ray"])
    assert code == cli.EXIT_USAGE
    assert stderr.strip().splitlines()[-1] == "error: --threads 3: no node of the Ray cluster has that many CPUs (at most 2)"


def test_worker_fails_inputs_and_out_folders_its_node_does_not_see(tmp_path):
    settings = cli.FitSettings(tmp_path / "out", {"body": "anny", "device": "cpu", "refine": False}, export=False, preview=False)
    steps = BatchSteps(cli.check_setup, cli.fit_quietly, cli.fit_together, cli.failed_outcome, cli.is_photo)
    worker = FitWorker(steps, settings, 1, [SAMPLE_SCAN])  # in this process: the actor's class, without Ray
    [(index, outcome)] = worker.fit([(7, tmp_path / "elsewhere.ply", "elsewhere")], debug=False)
    assert (index, outcome.status) == (7, "failed")
    assert outcome.message.startswith(f"the input {tmp_path / 'elsewhere.ply'} is not visible on node ")
    [(_, outcome)] = worker.fit([(0, SAMPLE_SCAN, "sample_scan")], debug=False)  # --out is not there either
    assert outcome.status == "failed" and f"the --out folder {tmp_path / 'out'} is not visible" in outcome.message
    assert outcome.message.endswith("put inputs and --out on storage every node sees") and not (tmp_path / "out").exists()


@pytest.mark.slow
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
