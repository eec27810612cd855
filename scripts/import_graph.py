"""The project's import graph, one line per module, and the checks the layout promises.

    python scripts/import_graph.py            # every module and the project modules it imports
    python scripts/import_graph.py --check    # exit 1, saying why, on a circle or a wrong-way import

Reads the source (ast), runs nothing. An import inside a function is marked ``(lazy)`` and does not
count towards circles (it runs on first use, after the module loaded); one under TYPE_CHECKING counts.
The rules checked:
- imports run one way: client -> coordinator -> node -> protos;
- no circle among module-level imports;
- a pipeline stage imports only the stages before it and the shared modules, never the gRPC
  client module or a registry implementation.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protos", "coordinator", "node", "client")
LAYERS = {"client": 3, "coordinator": 2, "node": 1, "protos": 0}  # a module imports its layer or lower ones
STAGES = {  # pipeline module -> stage number; answer.py composes them all
    "decompose": 1, "planner": 1, "route": 2, "stall": 3, "dispatch": 3, "execute": 3, "assemble": 4,
    "consistency": 4, "synthesize": 5, "reward": 6, "answer": 7,
}
SHARED = {"answers", "prompts", "operations"}  # pipeline modules every stage may read
NOT_FOR_STAGES = ("dellm.coordinator.node_client", "dellm.coordinator.registry.memory",
                  "dellm.coordinator.registry.sqlite", "dellm.coordinator.registry.redis")


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # at load time (and under TYPE_CHECKING)
    lazy: set[str] = field(default_factory=set)  # inside functions


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["dellm", *parts])


def _imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    names: set[str] = set()
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
    for candidate in candidates:
        while candidate and candidate not in known:  # `from pkg import name`: the module, or pkg itself
            candidate = candidate.rpartition(".")[0]
        if candidate:
            names.add(candidate)
    return names


def read_graph(root: Path = ROOT) -> dict[str, Module]:
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))
             if "_pb2" not in p.name]
    modules = {module_name(p): Module(module_name(p), p) for p in files}
    known = set(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))

        def visit(body: list[ast.stmt], lazy: bool, module: Module = module) -> None:
            for node in body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found = _imported(node, known) - {module.name}
                    (module.lazy if lazy else module.imports).update(found)
                elif isinstance(node, ast.If):  # TYPE_CHECKING imports count: a circle in types is one
                    visit(node.body, lazy)
                    visit(node.orelse, lazy)
                elif isinstance(node, ast.Try):
                    visit(node.body, lazy)
                    for handler in node.handlers:
                        visit(handler.body, lazy)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.Import | ast.ImportFrom):
                            module.lazy.update(_imported(inner, known) - {module.name})

        visit(tree.body, False)
        module.lazy -= module.imports
    return modules


def _package_init_parents(name: str, modules: dict[str, Module]) -> set[str]:
    """A module's own package __init__s: importing a module runs them, but that is not an import of its own."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in modules}


def find_cycles(modules: dict[str, Module]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(modules[name].imports - _package_init_parents(name, modules)):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            walk(name)
    return cycles


def layer_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    for module in modules.values():
        own = LAYERS[module.name.split(".")[1]]
        for target in sorted(module.imports | module.lazy):
            if LAYERS[target.split(".")[1]] > own:
                found.append(f"{module.name} imports {target}, a layer above it")
    return found


def stage_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    prefix = "dellm.coordinator.pipeline."
    for module in modules.values():
        if not module.name.startswith(prefix):
            continue
        short = module.name.removeprefix(prefix)
        for target in sorted(module.imports | module.lazy):
            if target in NOT_FOR_STAGES:
                found.append(f"{module.name} imports {target}")
            other = target.removeprefix(prefix) if target.startswith(prefix) else None
            if other is None or other in SHARED or (short in SHARED and other in SHARED):
                continue
            if short in SHARED:
                found.append(f"shared module {module.name} imports the stage {target}")
            elif short in STAGES and other in STAGES and STAGES[other] > STAGES[short]:
                found.append(f"stage {short} ({STAGES[short]}) imports the later stage {other} ({STAGES[other]})")
    return found


def render(modules: dict[str, Module]) -> str:
    lines = []
    for name in sorted(modules):
        module = modules[name]
        imports = sorted(i.removeprefix("dellm.") for i in module.imports)
        lazy = sorted(f"{i.removeprefix('dellm.')} (lazy)" for i in module.lazy)
        lines.append(f"{name.removeprefix('dellm.')} -> {', '.join(imports + lazy) or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the rules instead of printing the graph")
    args = parser.parse_args(argv)
    modules = read_graph()
    if not args.check:
        print(render(modules))
        return 0
    problems = [" -> ".join(c) for c in find_cycles(modules)] + layer_violations(modules) + stage_violations(modules)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(modules)} modules; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
