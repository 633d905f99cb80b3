"""Install Dependencies: pip in the background from a local wheelhouse (a stand-in torch wheel, offline),
replacing the extension's site-packages folder only on success; cancel and timeout; the preferences' list of
missing modules and the one-line refusals."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import dataclasses
import os
import sys
import time
import zipfile
from types import SimpleNamespace
from unittest import mock

import bpy
import pytest

from lvd_blender import installer
from test_blender_addon import addon, prefs  # noqa: F401  (the registered extension)


def fake_torch_wheelhouse(folder):
    """A folder holding a tiny wheel named torch 2.13.0 (pip installs it as it would the real one)."""
    folder.mkdir()
    info = "torch-2.13.0.dist-info"
    files = {
        "torch/__init__.py": "STAND_IN = True\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / "torch-2.13.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return folder


@pytest.fixture
def offline_pip(monkeypatch, tmp_path):
    """pip without this machine's configuration (its find-links hold the real torch), from a local wheelhouse."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(installer.WHEELHOUSE_VARIABLE, str(fake_torch_wheelhouse(tmp_path / "wheelhouse")))
    target = tmp_path / "site-packages"
    target.mkdir()
    (target / "previous.txt").write_text("kept until an install succeeds")
    return target


def test_pip_command_uses_the_cpu_index_or_the_wheelhouse(monkeypatch):
    monkeypatch.delenv(installer.WHEELHOUSE_VARIABLE, raising=False)
    monkeypatch.delenv(installer.INDEX_VARIABLE, raising=False)
    command = installer.pip_command("/target", "CPU")
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and command[-1] == "torch==2.13.0"
    assert command[command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu" and "--target" in command
    assert installer.needs_network()
    monkeypatch.setenv(installer.INDEX_VARIABLE, "https://mirror.example/whl")
    assert "https://mirror.example/whl" in installer.pip_command("/target", "CUDA")
    monkeypatch.setenv(installer.WHEELHOUSE_VARIABLE, "/wheels")
    command = installer.pip_command("/target", "CPU")
    assert "--no-index" in command and command[command.index("--find-links") + 1] == "/wheels" and "--index-url" not in command
    assert not installer.needs_network()


@pytest.mark.slow
def test_install_replaces_the_folder_whole(offline_pip):
    installation = installer.Installation(offline_pip, "CPU").start()
    assert installation.wait() == ""
    assert (offline_pip / "torch" / "__init__.py").read_text() == "STAND_IN = True\n"
    assert not (offline_pip / "previous.txt").exists() and not installation.staging.exists()
    assert installation.fraction == 1.0 and not installation.running


def test_failed_install_leaves_the_folder_as_it_was(offline_pip, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(installer.WHEELHOUSE_VARIABLE, str(tmp_path / "empty"))
    installation = installer.Installation(offline_pip, "CPU").start()
    error = installation.wait()
    assert error.startswith("pip failed: ERROR:") and "torch==2.13.0" in error and "\n" not in error
    assert sorted(path.name for path in offline_pip.parent.iterdir() if path.name.startswith("site")) == ["site-packages"]
    assert (offline_pip / "previous.txt").exists()


def slow_pip(installation, lines=()):
    """Replace pip by a process that prints `lines` the way pip does, then hangs."""
    script = "".join(f"print({line!r}, flush=True)\n" for line in lines) + "import time\ntime.sleep(60)\n"
    installation.command = [sys.executable, "-c", script]
    return installation


def test_cancel_stops_pip_and_changes_nothing(offline_pip):
    lines = ["Collecting torch==2.13.0", "Downloading torch-2.13.0-cp311-none-macosx_11_0_arm64.whl (75.2 MB)",
             "Progress 37600000 of 75200000"]  # fmt: skip
    installation = slow_pip(installer.Installation(offline_pip, "CPU"), lines).start()
    deadline = time.monotonic() + 10
    while installation.fraction < 0.4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert installation.text == "Downloading PyTorch: 38 of 75 MB" and 0.4 < installation.fraction < 0.5
    assert not installation.poll()
    installation.cancel()
    assert installation.poll() and installation.error == "cancelled: nothing was changed"
    assert (offline_pip / "previous.txt").exists() and not installation.staging.exists()


def test_pip_running_past_its_timeout_is_stopped(offline_pip, monkeypatch):
    monkeypatch.setitem(installer.BUILDS, "CPU", dataclasses.replace(installer.BUILDS["CPU"], timeout_s=0.3))
    installation = slow_pip(installer.Installation(offline_pip, "CPU")).start()
    started = time.monotonic()
    assert "took longer than" in installation.wait(step_s=0.05) and time.monotonic() - started < 10
    assert installation._process.poll() is not None and (offline_pip / "previous.txt").exists()


def test_offline_refusal_gives_the_command_to_run_by_hand(addon, monkeypatch):  # noqa: F811
    monkeypatch.delenv(installer.WHEELHOUSE_VARIABLE, raising=False)
    assert not bpy.app.online_access  # bpy as a module starts offline
    with pytest.raises(RuntimeError, match="offline") as refusal:
        bpy.ops.lvd.install_dependencies()
    message = str(refusal.value).strip()
    assert "\n" not in message and "-m pip install --target" in message
    assert "torch==2.13.0" in message and "--index-url https://download.pytorch.org/whl/cpu" in message


def test_cuda_build_needs_an_nvidia_gpu(addon, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv(installer.WHEELHOUSE_VARIABLE, str(tmp_path))
    monkeypatch.setattr(installer, "nvidia_gpu_present", lambda: False)
    prefs().torch_build = "CUDA"
    try:
        with pytest.raises(RuntimeError, match="no NVIDIA GPU found"):
            bpy.ops.lvd.install_dependencies()
    finally:
        prefs().torch_build = "CPU"


def test_preferences_list_every_missing_module_without_touching_sys_path_in_draw(addon, monkeypatch):  # noqa: F811
    monkeypatch.setitem(addon.core.FIT_MODULES, "lvd_no_such_module", "lvd-no-such-project")
    addon.preferences.refresh_dependencies(prefs())
    try:
        assert addon.preferences.MISSING == ["lvd-no-such-project"]
        layout, path_before = mock.MagicMock(), list(sys.path)
        addon.preferences.LVD_AddonPreferences.draw_dependencies(prefs(), layout)
        assert sys.path == path_before
        labels = [c.kwargs.get("text", "") for c in layout.mock_calls if c[0].endswith("label")]
        assert "Missing: lvd-no-such-project (needed to fit)" in labels
    finally:
        monkeypatch.undo()
        addon.preferences.refresh_dependencies(prefs())
    assert addon.preferences.MISSING == []


def test_modal_install_shows_progress_and_esc_cancels(addon, offline_pip, monkeypatch):  # noqa: F811
    """The UI path (headless Blender has no event loop: modal() driven by hand): the preferences draw the
    progress and a cancel button while pip runs; Esc stops it and the operator reports it in one line."""
    running = slow_pip(installer.Installation(offline_pip, "CPU"), ["Collecting torch==2.13.0"]).start()
    monkeypatch.setattr(addon.preferences, "INSTALLATION", running)
    deadline = time.monotonic() + 10
    while running.text != "Finding PyTorch" and time.monotonic() < deadline:
        time.sleep(0.05)
    layout = mock.MagicMock()
    addon.preferences.LVD_AddonPreferences.draw_dependencies(prefs(), layout)
    [progress] = [c for c in layout.mock_calls if c[0].endswith("progress")]
    assert progress.kwargs["text"] == "Finding PyTorch" and progress.kwargs["factor"] == running.fraction > 0
    assert "lvd.cancel_install" in [c.args[0] for c in layout.mock_calls if c[0].endswith("operator")]

    reports = []
    operator = SimpleNamespace(_timer=None, report=lambda kind, text: reports.append((kind, text)))
    operator._finish = lambda context: addon.preferences.LVD_OT_install_dependencies._finish(operator, context)
    context = SimpleNamespace(window_manager=SimpleNamespace(windows=[], event_timer_remove=lambda timer: None),
                              preferences=bpy.context.preferences)  # fmt: skip
    modal = addon.preferences.LVD_OT_install_dependencies.modal
    assert modal(operator, context, SimpleNamespace(type="TIMER")) == {"PASS_THROUGH"}
    assert modal(operator, context, SimpleNamespace(type="ESC")) == {"PASS_THROUGH"}
    assert modal(operator, context, SimpleNamespace(type="TIMER")) == {"CANCELLED"}
    assert reports == [({"ERROR"}, "Installing PyTorch: cancelled: nothing was changed")]
    assert (offline_pip / "previous.txt").exists()
