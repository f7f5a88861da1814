"""The benchmark scripts run end to end in their quick (--small) form and write the JSON keys the README quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_saliency_small_run(tmp_path):
    output = tmp_path / "saliency.json"
    script = ROOT / "scripts" / "bench_saliency.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--small", "--output", str(output)], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    for key in (
        "param_bytes",
        "peak_rss_bytes",
        "extra_over_param_bytes",
        "seconds",
        "mask_file_over_numel_div_8",
        "full_sort_estimate_bytes",
    ):
        assert key in result, key
    assert set(result["peak_rss_bytes"]) == {"model_only", "baseline", "saliency"}
    assert result["fraction_kept"] == pytest.approx(0.5, abs=0.01)
    assert result["mask_data_over_numel_div_8"] < 1.01
