import subprocess
import sys


def test_match_path_does_not_import_torch():
    code = ("import sys, epm_edge.match.run, epm_edge.match.blocking, epm_edge.cli, epm_edge.runtime.llamacpp; "
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _import_graph() -> dict[str, set[str]]:
    """epm_edge module -> the epm_edge modules it imports, at top level or inside functions."""
    import ast
    from pathlib import Path

    import epm_edge

    root = Path(epm_edge.__file__).parent
    files = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("epm_edge"):
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in files}
        graph[name] = {t for t in targets if t in files and t != name and t != "epm_edge"}
    return graph


def test_modules_import_in_layers_without_circles():
    """Runtimes never reach up into export, training, matching or the CLI; the model store is a
    leaf; and no two modules import each other, directly or through others."""
    graph = _import_graph()
    for name, targets in graph.items():
        if name.startswith("epm_edge.runtime"):
            assert not {t for t in targets if t.split(".")[1] in ("export", "train", "match", "cli", "resolve")}, name
    assert graph["epm_edge.model_store"] <= {"epm_edge.errors"}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for t in graph[todo.pop()] - seen:
                seen.add(t)
                todo.append(t)
        return seen

    circles = sorted(name for name in graph if name in reaches(name))
    assert not circles, circles
