import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelstore.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    s = Store.init(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run_cli(*args, store=None, cwd=None, env=None, check=None):
    """Run the real `modelstore` CLI in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "modelstore"]
    if store is not None:
        cmd += ["--store", str(store)]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          timeout=300)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def run_python(script: str) -> str:
    """Run `script` in a fresh interpreter that imports this checkout's modelstore; its
    stdout (the script must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_one_line_error(proc, code=1, contains=None):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    if contains:
        assert contains.lower() in err.lower(), err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
