import subprocess
import sys


def test_match_path_does_not_import_torch():
    code = ("import sys, epm_edge.match.run, epm_edge.match.blocking, epm_edge.cli, epm_edge.runtime.llamacpp; "
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
