"""The commands from an installed copy of the package (what the Docker image's `pip install .` gives), away from
the source tree: the wheel carries everything they read besides the environment."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from tests.coursepipe.test_startup_guard import _env
from tests.netutil import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
# what a wheel is not built from: a copy without them keeps the build's own files out of the source tree
NOT_PACKAGED = shutil.ignore_patterns(".git", ".venv", "tests", "bench", "docs", "examples", "build", "*.egg-info",
                                      "__pycache__", "gunicorn.conf.py")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel, unpacked into a directory of its own (what an install puts in site-packages)."""
    source = tmp_path_factory.mktemp("source") / "coursepipe"
    shutil.copytree(ROOT, source, ignore=NOT_PACKAGED)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
                   check=True, capture_output=True, timeout=300)
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(next(dist.glob("coursepipe-*.whl"))) as wheel:
        wheel.extractall(site)
    return site


def _cli(site: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `coursepipe` command run from `site` (first on the path, before the checkout's editable install)."""
    return [sys.executable, "-m", "coursepipe.cli"], env | {"PYTHONPATH": str(site)}


def test_coursepipe_ingress_serves_from_an_installed_package(installed, tmp_path, redis_url):
    """`coursepipe ingress` runs gunicorn with the settings the package holds: it answers, with none of the source
    tree's files at hand (before, it looked for gunicorn.conf.py beside the installed packages)."""
    cli, env = _cli(installed, _env(f"sqlite:///{tmp_path / 'cp.db'}", redis_url))
    found = subprocess.run([*cli[:1], "-c", "import coursepipe.cli, ingress; print(coursepipe.cli.__file__, "
                            "ingress.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert all(path.startswith(str(installed)) for path in found.stdout.split())
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    port = free_port()
    proc = subprocess.Popen([*cli, "ingress", "--port", str(port), "--workers", "1"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def answers() -> bool:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or its worker still starting
                return False

        assert wait_until(answers, timeout=60)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # the package's settings applied: gunicorn's control socket is off (gunicorn says when it opens one)
    assert "Control socket" not in stderr
