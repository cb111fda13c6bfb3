"""`wmhp train` / `wmhp translate` from a user's side: clear errors with exit code 2, readable output."""

import subprocess
import sys


def wmhp(*args):
    return subprocess.run([sys.executable, "-m", "wmhp.cli", *args], capture_output=True, text=True)


def test_unknown_command_and_key_exit_2():
    result = wmhp("trian")
    assert result.returncode == 2 and "trian" in result.stderr
    result = wmhp("train", "--set", "binary_opt.alpah=0.1")
    assert result.returncode == 2 and "binary_opt.alpah" in result.stderr and "Traceback" not in result.stderr
    result = wmhp("train", "--set", "epochs=many")
    assert result.returncode == 2 and "epochs" in result.stderr


def test_missing_config_file_exit_2(tmp_path):
    result = wmhp("train", str(tmp_path / "none.yaml"))
    assert result.returncode == 2 and "none.yaml" in result.stderr


def test_print_config_shows_resolved_filter(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("binary_opt:\n  lr: 0.1\n  weight_decay: 5e-4\n  momentum: 0.9\n")
    result = wmhp("train", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "alpha: 0.00050227" in result.stdout


def test_translate_both_ways():
    result = wmhp("translate", "--lr", "0.1", "--weight-decay", "5e-4", "--momentum", "0.9")
    assert result.returncode == 0, result.stderr
    alpha_row = next(line for line in result.stdout.splitlines() if line.startswith("alpha"))
    assert alpha_row.split()[1].startswith("0.00050227")
    result = wmhp("translate", "--alpha", "5e-4", "--gamma", "2", "--lr", "0.1")
    assert result.returncode == 2 and "gamma" in result.stderr
