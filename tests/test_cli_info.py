"""`psvit-export info` through the real entry point."""
import json
import subprocess
import sys

import psvit
from psvit.cli import main


def test_info_lists_every_variant(capsys):
    assert main(["info", "--json"]) == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)] == psvit.list_models()
    assert main(["info"]) == 0  # the table renders too (its text is for people; machines read --json)


def test_info_json_matches_model_stats(capsys):
    assert main(["info", "psvit_2d_tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stats = psvit.model_stats("psvit_2d_tiny")
    assert data[0]["macs"] == stats.macs and data[0]["tokens"] == [197, 50, 17]


def test_unknown_variant_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "psvit.cli", "info", "psvit_mcro"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Did you mean psvit_micro" in proc.stderr and "Traceback" not in proc.stderr
