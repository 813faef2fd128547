"""Lint as ROS packages do (ament_flake8 + ament_pep257 rules, via ruff; see ruff.toml)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_flake8_pep257() -> None:
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', REPO],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
