"""scripts/imatrix_effect.py (the README's imatrix table) still runs; at toy scale, no numbers asserted
beyond their range."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "imatrix_effect.py"


def test_imatrix_effect_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tokens", "300", "--samples", "2", "--seq-len", "64",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| q")]
    assert len(rows) == 9
    for row in rows:
        agree, kl = (float(cell) for cell in row.strip("|").split("|")[2:4])
        assert 0 <= agree <= 1 and kl >= 0
