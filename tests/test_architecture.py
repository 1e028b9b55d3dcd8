"""The layout's rules (docs/architecture.md), read from the source: which module may import which,
and how long a module may grow. Plain unit tests: no Django, no database."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import PROJECT_DIR

APPS = ("chat", "monitoring")
# Where llmserver wires the apps together: the only modules of the project package that import them.
LLMSERVER_WIRING = {"llmserver.urls", "llmserver.asgi"}
# Inside chat, each domain's rank: a module imports chat modules of a lower rank, or of its own
# package, never of a higher rank or of another package of the same rank. The HTTP layers (api,
# openai) sit on the turn; the admin, the commands and the app's wiring sit on everything.
CHAT_RANKS = {
    "chat.models": 0, "chat.exceptions": 0, "chat.tokens": 0, "chat.images": 0,
    "chat.keys": 1, "chat.providers": 1,
    "chat.upstreams": 2,
    "chat.sessions": 3, "chat.usage": 3,
    "chat.turns": 4,
    "chat.api": 5, "chat.openai": 5,
    "chat.admin": 6, "chat.management": 6, "chat.apps": 6,
}
MAX_MODULE_LINES = 450


def modules(*packages: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of `packages`, migrations left out."""
    for package in packages:
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


# Calls that import the module named by their first argument.
DYNAMIC_IMPORTS = {"import_module", "__import__", "import_string"}


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def imported(path: Path, module: str) -> set[str]:
    """Every module `path` imports, anywhere in it (functions too), as dotted names: for
    `from a.b import c` both `a.b` and `a.b.c` (c may be a module or a name in a.b); the string
    given to importlib.import_module, __import__ or Django's import_string; and, after `import a`,
    every `a.b.c` reached through it."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            bound.update(alias.name.partition(".")[0] for alias in node.names if alias.asname is None)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (dotted := _dotted(node)) and dotted.partition(".")[0] in bound:
            names.add(dotted)
    return names


def belongs_to(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def chat_domain(name: str) -> str | None:
    return next((domain for domain in CHAT_RANKS if belongs_to(name, domain)), None)


def test_chat_never_imports_monitoring() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in modules("chat") for name in imported(path, module) if belongs_to(name, "monitoring")
    ]
    assert not offenders


def test_llmserver_imports_the_apps_only_where_it_wires_them() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in modules("llmserver") if module not in LLMSERVER_WIRING
        for name in imported(path, module) if any(belongs_to(name, app) for app in APPS)
    ]
    assert not offenders


def test_every_chat_module_belongs_to_a_ranked_domain() -> None:
    # The app's package itself holds nothing, so that it cannot be a way round the ranks.
    assert not (PROJECT_DIR / "chat" / "__init__.py").read_text().strip()
    unranked = [module for module, _path in modules("chat") if module != "chat" and chat_domain(module) is None]
    assert not unranked, "add each new package of chat to CHAT_RANKS (and to docs/architecture.md)"


def test_a_chat_domain_imports_only_lower_domains() -> None:
    offenders = []
    for module, path in modules("chat"):
        own = chat_domain(module)
        if own is None:
            continue
        for name in imported(path, module):
            other = chat_domain(name)
            if other is None or other == own:
                continue
            if CHAT_RANKS[other] >= CHAT_RANKS[own]:
                offenders.append(f"{module} (rank {CHAT_RANKS[own]}) imports {name} (rank {CHAT_RANKS[other]})")
    assert not offenders


@pytest.mark.parametrize("package", ["chat", "llmserver", "monitoring", "bench"])
def test_no_module_is_longer_than_the_limit(package: str) -> None:
    long = {
        module: lines for module, path in modules(package)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by what they do (at most {MAX_MODULE_LINES} lines each)"


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in modules("tests") for name in imported(path, module)
        if name.rpartition(".")[2].startswith("test_") and belongs_to(name, "tests") or name == "tests.conftest"
    ]
    assert not offenders, "shared helpers belong in tests/support/"
