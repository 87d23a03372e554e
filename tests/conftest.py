import pytest

from particlegan.numba_setup import configure

# numba set up as the particlegan command sets it up, before anything imports numba: runs made in
# this process then use the code generation (vector width) of the CLI and sweep-worker processes
# the tests compare them with (cpu-backend results differ to rounding between vector widths).
configure()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run study-scale tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow study: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def sigkill_resume(tmp_path):
    """Shared body of the SIGKILL-resume tests (particle and neural engines).

    ``sigkill_resume(overrides)`` runs ``particlegan run`` with those ``--set`` overrides to the
    end (``tmp_path/full``), starts the same run again (``tmp_path/kill``), SIGKILLs it once its
    first checkpoint exists, resumes it with ``run --resume`` and asserts that the resumed
    result.npz is bitwise identical to the uninterrupted one. The overrides must enable
    ``run.checkpoint_every`` and make the run long enough to be killed mid-way.
    """
    import signal
    import subprocess
    import sys
    import time

    def check(overrides):
        args = [a for o in overrides for a in ("--set", o)]
        cmd = [sys.executable, "-m", "particlegan", "run", *args, "--no-plot", "--out"]
        full = subprocess.run(cmd + [str(tmp_path / "full")], capture_output=True, text=True,
                              timeout=300)
        assert full.returncode == 0, full.stderr
        proc = subprocess.Popen(cmd + [str(tmp_path / "kill")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ckpt = tmp_path / "kill" / "checkpoint.npz"
        deadline = time.time() + 240
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "run finished before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "kill" / "meta.json").exists()
        res = subprocess.run([sys.executable, "-m", "particlegan", "run", "--resume",
                              str(tmp_path / "kill"), "--no-plot"], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "kill" / "result.npz").read_bytes() == \
            (tmp_path / "full" / "result.npz").read_bytes()

    return check
