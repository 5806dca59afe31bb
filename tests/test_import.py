import subprocess
import sys


def test_import_mpsearch_stays_light():
    code = ("import sys, mpsearch, mpsearch.quant, mpsearch.config; "
            "heavy = [m for m in ('ray', 'optuna', 'pyhessian', 'matplotlib', 'pandas') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import mpsearch pulled in heavy modules: {out}"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mpsearch.cli.main", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("data", "train"):
        assert command in out
