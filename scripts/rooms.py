"""How the package's rooms connect: rooms, the imports between them, and any circles.

    python scripts/rooms.py            # this checkout
    python scripts/rooms.py --at REV   # the package as git has it at REV

A room is a folder directly under `lora_space/`, or a module loose at its top. An arrow is a room
that imports another (every `import`/`from` of the package, in functions too, and under
TYPE_CHECKING). A circle is a group of rooms that import each other round; the files in it are
listed with the rooms they import, so that a circle can be cut where it is made. The same is
done for the modules inside each room. Nothing is imported or run.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import defaultdict
from pathlib import Path

PACKAGE = "lora_space"


def sources(at: str | None) -> dict[str, str]:
    """Module path (`lora_space/x/y.py`) -> source, from the working tree or from git at `at`."""
    if at is None:
        return {path.as_posix(): path.read_text() for path in Path(PACKAGE).rglob("*.py")}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", at, PACKAGE], capture_output=True, text=True, check=True)
    return {
        name: subprocess.run(["git", "show", f"{at}:{name}"], capture_output=True, text=True, check=True).stdout
        for name in names.stdout.split()
        if name.endswith(".py")
    }


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def imports(path: str, text: str) -> set[str]:
    """The package modules a file imports (absolute names)."""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith(PACKAGE):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", help="a git revision (default: the working tree)")
    args = parser.parse_args()
    files = sources(args.at)
    modules = {module_name(path): path for path in files}
    rooms: dict[str, set[str]] = defaultdict(set)
    inner: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    why: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module, path in modules.items():
        room = room_of(module)
        rooms[room]
        for target in imports(path, files[path]):
            if target not in modules:
                continue
            other = room_of(target)
            if other != room:
                rooms[room].add(other)
                why[(room, other)].add(path)
            elif target != module and not target.endswith("__init__") and module in modules:
                inner[room][module].add(target)
    loose = sorted(room for room in rooms if f"{PACKAGE}.{room}" in modules and not modules[f"{PACKAGE}.{room}"].endswith("__init__.py"))
    arrows = sum(len(targets) for targets in rooms.values())
    found = circles(rooms)
    inside = [(room, group) for room, graph in sorted(inner.items()) for group in circles(graph)]
    sizes = sorted(((len(text.splitlines()), path) for path, text in files.items()), reverse=True)
    print(f"rooms {len(rooms)}, arrows between rooms {arrows}, circles {len(found)}, circles inside a room {len(inside)}")
    print(f"modules loose at the top of {PACKAGE}/: {len(loose)} ({', '.join(loose)})")
    print("largest modules: " + ", ".join(f"{path} {lines}" for lines, path in sizes[:3]))
    for group in found:
        print("circle: " + " <-> ".join(group))
        for room in group:
            for other in group:
                if (room, other) in why:
                    print(f"  {room} -> {other}: {', '.join(sorted(why[(room, other)]))}")
    for room, group in inside:
        print(f"circle inside {room}: " + " <-> ".join(group))


if __name__ == "__main__":
    main()
