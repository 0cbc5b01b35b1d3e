"""gradio is the optional [app] extra: without it `synthvit app` says how to install it, in one line."""

import subprocess
import sys

from helpers.repo import REPO, pipeline_env


def test_app_without_gradio_names_the_extra(tmp_path):
    # A real interpreter in which `import gradio` fails, as in an install without the extra:
    # sitecustomize runs at start-up, and a None in sys.modules makes the import raise.
    shim = tmp_path / "no_gradio"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['gradio'] = None\n")
    env = pipeline_env(tmp_path)
    env["PYTHONPATH"] = f"{shim}:{REPO / 'src'}"
    hidden = subprocess.run([sys.executable, "-c", "import gradio"], env=env, capture_output=True, text=True)
    assert hidden.returncode != 0 and "ModuleNotFoundError" in hidden.stderr  # the shim works
    result = subprocess.run(
        [sys.executable, "-m", "synthvit.commands.cli", "app", "--model", "models/finetune.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: synthvit app needs gradio, which is not installed: pip install 'synthvit[app]'"
    ]
