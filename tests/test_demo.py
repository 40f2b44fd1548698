"""`podspool demo` delivers every bundled sample event, as a newcomer runs it."""

import os
import subprocess
import sys

import pytest

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "podspool", "samples")


@pytest.mark.integration
def test_demo_delivers_every_sample(tmp_path):
    result = subprocess.run([sys.executable, "-m", "podspool", "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 44 sample events delivered" in result.stdout
    for log_type in ("message", "maillog", "audit"):
        with open(os.path.join(SAMPLES, f"{log_type}.ndjson"), encoding="utf-8") as handle:
            expected = [line for line in handle.read().splitlines() if line]
        delivered = (tmp_path / "podspool-demo" / "delivered" / f"demo-{log_type}.ndjson").read_text()
        assert delivered.splitlines() == expected
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_demo_runs_twice_in_same_directory(tmp_path):
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "podspool", "demo"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_demo_keeps_foreign_directory(tmp_path):
    (tmp_path / "podspool-demo").mkdir()
    (tmp_path / "podspool-demo" / "mine.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "podspool", "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "was not written by podspool demo" in result.stderr
    assert (tmp_path / "podspool-demo" / "mine.txt").read_text() == "keep me"
