"""The package's shape: no import cycles between its parts, and inference without the trainer."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "clap_jax")


def _part(module: str) -> str:
    """clap_jax.convert.msclap -> clap_jax.convert; clap_jax.inference -> clap_jax.inference."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """part -> the other parts its modules import (anywhere in the module, function bodies included)."""
    graph: dict[str, set[str]] = {}
    for dirpath, _, names in os.walk(PKG):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
            src = _part(module)
            for node in ast.walk(ast.parse(open(path).read())):
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for t in targets:
                    if t.startswith("clap_jax.") and _part(t) != src and _part(t) != "clap_jax":
                        graph.setdefault(src, set()).add(_part(t))
    return graph


def test_no_import_cycles_between_parts():
    graph = _imports()
    assert "clap_jax.convert" in graph and "clap_jax.train" in graph   # the walk found the package
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    # the layers, bottom up: a part imports only parts of lower layers
    layers = [("clap_jax.errors", "clap_jax.files", "clap_jax.scoring", "clap_jax.hostmem"), ("clap_jax.audio",),
              ("clap_jax.text",), ("clap_jax.models",), ("clap_jax.data",), ("clap_jax.convert",),
              ("clap_jax.inference",), ("clap_jax.eval", "clap_jax.classify", "clap_jax.caption"), ("clap_jax.train",),
              ("clap_jax.finetune",)]
    rank = {p: i for i, layer in enumerate(layers) for p in layer}
    for src, dsts in graph.items():
        if src == "clap_jax":   # the package root only re-exports CLAP, lazily
            continue
        assert src in rank, f"{src} is not placed in a layer"
        for d in dsts:
            assert rank[d] < rank[src], f"{src} imports {d}, a part of its own or a higher layer"


def test_clap_imports_no_trainer_module():
    code = ("import clap_jax, sys; from clap_jax import CLAP; "
            "bad = [m for m in sys.modules if m.startswith('clap_jax.train')]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr
