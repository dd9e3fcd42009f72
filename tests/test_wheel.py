"""The package as users install it: a wheel built from this checkout, installed in a fresh venv
(offline: no index, the dependencies reused from the running environment), finds everything it
reads at run time (default recipe, shipped model) inside itself, away from the checkout."""

import csv
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("epm_edge-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    # The dependencies: this environment's site-packages, after the venv's own (so the wheel's
    # epm_edge wins; .pth files of an added dir, such as an editable install's, are not run).
    site = Path(subprocess.run([env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def run(venv: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())})


def test_wheel_holds_every_package_recipe_and_shipped_model(venv, tmp_path):
    code = ("import pathlib, epm_edge, epm_edge.model_store as m, epm_edge.export.recipe as r\n"
            "print(pathlib.Path(epm_edge.__file__).parent); print(m.shipped_adapter())\n"
            "print(r.DEFAULT_RECIPE); print(len(r.load_recipe().variants))")
    r = run(venv, venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    package, adapter, recipe, variants = r.stdout.split()
    assert Path(package).is_relative_to(venv) and not Path(package).is_relative_to(ROOT)
    assert Path(adapter) == Path(package) / "models" / "epm-smollm2-135m"
    assert Path(recipe).is_relative_to(package) and int(variants) > 0
    source = {p.parent.relative_to(ROOT) for p in (ROOT / "epm_edge").rglob("__init__.py")}
    assert source <= {p.parent.relative_to(Path(package).parent) for p in Path(package).rglob("__init__.py")}


def test_installed_commands_run_outside_the_checkout(venv, tmp_path):
    r = run(venv, venv / "bin" / "epm-edge", "export", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--recipe" in r.stdout, r.stderr
    site_model = next(venv.glob("lib/python*/site-packages/epm_edge/models/epm-smollm2-135m"))
    r = run(venv, venv / "bin" / "epm-edge", "match", ROOT / "examples" / "retailer.csv",
            ROOT / "examples" / "marketplace.csv", "--model", site_model, "--top-k", "1",
            "-o", tmp_path / "out.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(ROOT / "examples" / "retailer.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [row["a_id"] for row in rows] == [rec["sku"] for rec in records]  # one candidate each
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows)
