"""What a command pays before and around its fits: torch._dynamo is not imported by loading the body model
and the network, and the rigged exporter is one process per command (or batch worker), started early and fed
character after character."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lvd_core import cli
from lvd_core.outputs import RiggedExportError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loading_anny_and_the_scan_network_leaves_torch_dynamo_unimported():
    """roma's import and the network's meta-device check each imported torch._dynamo (~1.5 s of CPU); anny's
    rest bone frames (the armature's) imported sympy through roma.Rigid's shape check (0.3 s)."""
    script = textwrap.dedent("""
        import sys
        import torch
        from lvd_core.body import load_body_model
        from lvd_core.body.base import matrix_to_axis_angle
        from lvd_core.checkpoints import load_network, resolve_weights

        body = load_body_model("anny")
        load_network(resolve_weights("anny", None), "cpu")
        body.rest_bone_orientations(torch.full((1, body.shape_size), 0.5))
        quarter = matrix_to_axis_angle(torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        print("torch._dynamo" in sys.modules, "sympy" in sys.modules, [round(x, 4) for x in quarter.tolist()])
        import torch._dynamo  # still there for whoever needs it
        print(callable(torch._dynamo.disable))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["False False [0.0, 0.0, 1.5708]", "True"]


# ---------------------------------------------------------------------------------------------------------
# the rigged exporter's process


def test_the_headless_exporter_answers_each_request_on_its_own_line(monkeypatch):
    from lvd_blender import headless_export

    written = []

    def export_rigged(name, character, targets):
        if name == "broken":
            raise ValueError("no armature\nmore detail")
        written.append((name, character, targets))

    monkeypatch.setattr(headless_export, "export_rigged", export_rigged)
    requests = io.BytesIO(b"".join(pickle.dumps({"name": name, "character": {"n": i}, "targets": {"glb": f"/x/{name}.glb"}})
                                   for i, name in enumerate(["one", "broken", "two"])))  # fmt: skip
    replies = io.StringIO()
    headless_export.serve(requests, replies)
    assert [json.loads(line) for line in replies.getvalue().splitlines()] == [
        {"ok": True}, {"error": "ValueError: no armature"}, {"ok": True}]  # fmt: skip
    assert [name for name, *_ in written] == ["one", "two"] and written[1][1] == {"n": 2}


FAKE_EXPORTER = '''
import os, sys
from lvd_blender import headless_export

def export_rigged(name, character, targets):  # what Blender would write, and who wrote it
    if name == "crash":
        os._exit(3)
    for path in targets.values():
        with open(path, "w") as file:
            file.write(f"{name} {os.getpid()}")

headless_export.export_rigged = export_rigged
sys.exit(headless_export.main())
'''


@pytest.fixture
def fake_exporter(tmp_path, monkeypatch):
    """cli's rigged exporter runs a stand-in for Blender's (same protocol, headless_export.serve) that writes
    its name and process id in each file."""
    (tmp_path / "fake_rigged_exporter.py").write_text(FAKE_EXPORTER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(cli, "RIGGED_EXPORTER", "fake_rigged_exporter")
    monkeypatch.setattr(cli, "rigged_export_unavailable", lambda: None)
    yield tmp_path
    cli.close_rigged_exporter()


@pytest.mark.slow
def test_one_exporter_process_writes_every_character_and_a_dead_one_is_replaced(fake_exporter):
    def export(name: str) -> str:
        target = fake_exporter / f"{name}.glb"
        finish = cli.write_rigged_in_blender(name, {}, {"glb": target})
        finish()
        return target.read_text()

    first, second = export("first"), export("second")
    assert first.split()[0] == "first" and second.split()[0] == "second"
    assert first.split()[1] == second.split()[1]  # one process
    with pytest.raises(RiggedExportError, match="Blender's export failed: exit code 3"):
        export("crash")
    third = export("third")
    assert third.split()[1] != first.split()[1]  # a fresh process after the crash
    cli.close_rigged_exporter()
    assert cli._rigged_exporter is None


@pytest.mark.slow
def test_a_fit_command_starts_the_exporter_before_fitting(fake_exporter, monkeypatch):
    """The exporter's start (Blender's import) overlaps the fit: it is running when the fit begins."""
    seen = []

    def fit_input(source, stem, settings):
        seen.append(cli._rigged_exporter is not None and cli._rigged_exporter.alive)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "fit_input", fit_input)
    code = cli.main(["fit", str(cli.SAMPLE_SCAN), "--out", str(fake_exporter / "out")])
    assert code == 1 and seen == [True]
    assert cli._rigged_exporter is None  # ended with the command
