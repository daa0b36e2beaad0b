"""`edgesam --help` must stay instant: no torch (or other heavy runtime) at import time."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnx", "onnxruntime", "tensorflow", "tensorrt", "numpy", "PIL", "pycocotools")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint('@@' + json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.split("@@", 1)[1]))


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from edgesam_cli.main import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
    )
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded], sorted(m for m in HEAVY if m in loaded)


def test_every_command_help_is_light():
    from typer.main import get_command

    from edgesam_cli.main import app

    names = list(get_command(app).commands)  # type: ignore[attr-defined]
    assert names, "no commands registered"
    for name in names:
        code = (
            "from edgesam_cli.main import app\n"
            "from typer.testing import CliRunner\n"
            f"r = CliRunner().invoke(app, [{name!r}, '--help'])\n"
            "assert r.exit_code == 0, r.output\n"
        )
        loaded = _modules_after(code)
        assert "torch" not in loaded, f"`edgesam {name} --help` imported torch"


def test_console_script_help_runs():
    proc = subprocess.run([sys.executable, "-m", "edgesam_cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "edgesam" in proc.stdout.lower()


def test_core_import_is_lazy():
    loaded = _modules_after("import edgesam_core, edgesam_core.errors, edgesam_core.deps, edgesam_core.progress")
    assert "torch" not in loaded
