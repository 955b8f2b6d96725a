"""Which config keys a diffusion-pipe checkout reads: a static `ast` scan of its train.py, utils/ and models/.

Upstream has no schema: its "schema" is whatever `config['x']`, `config.get('x', d)` and `'x' in config` its code
does. So dpdeck derives the known keys from the code itself instead of keeping a hand list that goes stale.

How a name comes to mean a config table is found by method: the seeds below name the roots (the parsed TOML
files and the parameters that carry them), and every other alias is followed from an assignment
(`model_config = config['model']`, `self.model_config = self.config['model']`, `for te in
model_config['text_encoders']`, walrus, `.get('monitoring', {})`). Model types come from train.py's dispatch
(`if model_type == 'flux': from models import flux`); a type's [model] keys are the reads in its module plus the
classes and helpers that module reaches (base classes in models/base.py, imported helpers).

A key is "required" only where upstream raises KeyError without it: a subscript that always runs (no `if`/`try`
around it other than one proving its table present, `if __name__ == '__main__'`, rank 0's `is_main_process()`,
or a key read in every branch of an if/elif/else), of a key the code never tests for (`in`, `.get`) and never
sets itself first (`setdefault`, assignment). Enums are the string literals a key's value is compared with
(`== 'cosine'`, `in ('a', 'b')`) or looked up in (`DTYPE_MAP[config['dtype']]`).

    python -m profiles.dp_scan CHECKOUT [--json] [--commit SHA] [--source LABEL]

Pure stdlib; it never imports or runs the checkout's code.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Names and `self.` attributes that hold a parsed config table where the scan cannot follow an assignment
# (the TOML is loaded from a path, or arrives as a function parameter). Everything else is derived.
NAME_SEEDS: dict[str, str] = {
    "config": "main",
    "model_config": "model",
    "adapter_config": "adapter",
    "dataset_config": "dataset",
    "eval_dataset_config": "dataset",
    "directory_config": "directory",
}
ATTR_SEEDS: dict[str, str] = {"config": "main", "model_config": "model"}
# A seed name assigned from one of these calls keeps its meaning (it is the root being parsed); assigned from
# anything else, the name means something else in that function (`config = VAE.load_config(...)`).
ROOT_LOADERS = frozenset({"load", "loads", "safe_load"})
# `config` is a common parameter name for other things (a diffusers config dict, a dataset table); as a bare
# parameter it means the main table only in constructors, which is how train.py hands it to pipelines. Calls
# whose arguments resolve to a table bind their parameters anyway (`dataset_config_validation(dataset_config)`).
ROOT_PARAM_ONLY_IN = {"config": frozenset({"__init__"})}
# Conditions that hold on some process of every run (rank 0): a KeyError under them still crashes the run.
ALWAYS_TRUE_CALLS = frozenset({"is_main_process"})
# Sub-tables named the way dpdeck's profile model names them; others are "parent.key".
TABLE_NAMES: dict[tuple[str, str], str] = {
    ("main", "eval_datasets"): "eval_dataset",
    ("dataset", "directory"): "directory",
}
# Calls on a table that read one key; the second argument (when given) is the default.
KEY_METHODS = frozenset({"get", "setdefault", "pop"})
# Calls that hand the whole table on (`**optimizer_kwargs`): any key may be meaningful there.
OPEN_METHODS = frozenset({"items", "keys", "values"})
# Where the code lives; submodules (ComfyUI, HunyuanVideo ...) are other projects' code, never scanned.
SCAN_ROOTS = ("train.py", "utils", "models")


@dataclass(frozen=True)
class Read:
    table: str
    key: str
    kind: str  # sub | get | in | setdefault | pop | store
    default: object | None
    file: str
    line: int
    scope: str = ""  # the function it is in, for "set before read" ordering
    blockers: tuple[int, ...] = ()  # the enclosing conditions (by depth) that may skip it

    @property
    def conditional(self) -> bool:
        return bool(self.blockers)


@dataclass(frozen=True)
class Ref:
    """What an expression denotes: a config table (`table`), and when it is a value read, where from."""

    table: str
    origin: tuple[str, str] | None = None  # (table, key) the value was read from


@dataclass
class _Unit:
    """A top-level class or function (or the module body): the grain of reachability from a model type."""

    reads: list[Read] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    supers: set[str] = field(default_factory=set)  # `super().m(...)`: the next definition of m runs too


@dataclass
class _Class:
    bases: list[str]
    methods: list[str]


@dataclass
class FileScan:
    rel: str
    root: Path
    units: dict[str, _Unit] = field(default_factory=dict)  # "f", "Class" (its body), "Class.method"
    classes: dict[str, _Class] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (file rel, name)
    dispatch: list[tuple[str, str]] = field(default_factory=list)  # (model type, module file rel)
    enums: dict[str, set[str]] = field(default_factory=dict)
    open_tables: set[str] = field(default_factory=set)


def child_table(table: str, key: str) -> str:
    named = TABLE_NAMES.get((table, key))
    if named:
        return named
    return key if table == "main" else f"{table}.{key}"


def _const_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _literal(node: ast.AST | None) -> object | None:
    """A default written as a literal; a nested `.get(k, d)` yields its own default; anything else None."""
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, RecursionError):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            return _literal(node.args[1]) if len(node.args) > 1 else None
        return None
    return _jsonable(value)


def _jsonable(value: object) -> object | None:
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


class _Scanner(ast.NodeVisitor):
    """One file, in source order, with one alias scope per function (closures see their parent's)."""

    def __init__(self, scan: FileScan, attrs: dict[str, Ref], dicts: dict[str, list[str]],
                 params: dict[tuple[str, str, str], Ref] | None = None) -> None:
        self.scan = scan
        self.attrs = attrs
        self.dicts = dicts
        self.params = params or {}
        self.scopes: list[dict[str, Ref | None]] = [{}]
        self.unit = scan.units.setdefault("<module>", _Unit())
        # Enclosing conditions: each holds the tables whose existence it tests (`if 'adapter' in config:`,
        # `if adapter := config.get('adapter')`), or ALL for a guard that always holds (`if __name__ ...`).
        self.frames: list[frozenset[str]] = []
        self.calls: list[tuple[str, list[Ref | None]]] = []
        self.klass: list[str] = []
        self.fn: list[str] = []

    # -- resolving expressions to tables --------------------------------------------------------------------
    def lookup(self, name: str) -> Ref | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        seed = NAME_SEEDS.get(name)
        return Ref(seed) if seed else None

    def resolve(self, node: ast.AST) -> Ref | None:
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return self.attrs.get(node.attr)
        if isinstance(node, ast.Subscript):
            base = self.resolve(node.value)
            key = _const_str(node.slice)
            if base and key is not None:
                return Ref(child_table(base.table, key), (base.table, key))
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in KEY_METHODS and node.args:
                base = self.resolve(node.func.value)
                key = _const_str(node.args[0])
                if base and key is not None:
                    return Ref(child_table(base.table, key), (base.table, key))
            return None
        if isinstance(node, ast.NamedExpr):
            return self.resolve(node.value)
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                ref = self.resolve(value)
                if ref:
                    return ref
        return None

    # -- recording -------------------------------------------------------------------------------------------
    def record(self, table: str, key: str, kind: str, node: ast.AST, default: object | None = None) -> None:
        blockers = self.blockers(table)
        self.unit.reads.append(Read(table, key, kind, default, self.scan.rel, getattr(node, "lineno", 0),
                                    self.scope(), blockers))

    def blockers(self, table: str) -> tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.frames) if ALL not in f and table not in f)

    def scope(self) -> str:
        return f"{self.scan.rel}:{self.fn[-1] if self.fn else ''}"

    def enum(self, origin: tuple[str, str] | None, values: list[str]) -> None:
        if origin and values:
            self.scan.enums.setdefault(f"{origin[0]}.{origin[1]}", set()).update(values)

    def bind(self, target: ast.AST, ref: Ref | None, loader: bool = False) -> None:
        if isinstance(target, ast.Name):
            if ref is None and loader and target.id in NAME_SEEDS:
                return  # the root table itself, parsed here
            self.scopes[-1][target.id] = ref
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, None)

    # -- visitors --------------------------------------------------------------------------------------------
    def _unit_body(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        outer = self.unit
        if len(self.scopes) == 1:
            self.unit = self.scan.units.setdefault(node.name, _Unit())
        elif len(self.scopes) == 2 and len(self.klass) == 1 and not isinstance(node, ast.ClassDef):
            self.unit = self.scan.units.setdefault(f"{self.klass[0]}.{node.name}", _Unit())
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if not isinstance(base, ast.Name):  # a base is inherited through _mro, not "used" as a whole
                    self.visit(base)
            if len(self.scopes) == 1:
                self.scan.classes[node.name] = _Class(
                    [b.id for b in node.bases if isinstance(b, ast.Name)],
                    [f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))])
            self.klass.append(node.name)
        else:
            for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(default)
        self.scopes.append({})
        if not isinstance(node, ast.ClassDef):
            qual = f"{self.klass[-1]}.{node.name}" if self.klass else node.name
            for arg in _params(node):
                self.scopes[-1][arg] = _param_ref(self.params, self.scan.rel, qual, arg)
        saved, self.frames = self.frames, []  # a function body runs whole when called
        self.fn.append(f"{'.'.join(self.klass)}.{node.name}")
        for stmt in node.body:
            self.visit(stmt)
        self.fn.pop()
        self.frames = saved
        self.scopes.pop()
        if isinstance(node, ast.ClassDef):
            self.klass.pop()
        self.unit = outer

    visit_FunctionDef = _unit_body
    visit_AsyncFunctionDef = _unit_body
    visit_ClassDef = _unit_body

    def visit_Name(self, node: ast.Name) -> None:
        self.unit.names.add(node.id)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if _module_file(self.scan.root, self.scan.rel, node.module, node.level, alias.name):
                continue  # a module (`from models import flux`), reached through the dispatch instead
            mod = _module_file(self.scan.root, self.scan.rel, node.module, node.level, None)
            if mod:
                self.scan.imports[alias.asname or alias.name] = (mod, alias.name)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        ref = self.resolve(node.value)
        loader = _is_loader(node.value)
        for target in node.targets:
            self._store(target)
            self.bind(target, ref, loader)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._store(node.target)
            self.bind(node.target, self.resolve(node.value), _is_loader(node.value))

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._store(node.target)

    def _store(self, target: ast.AST) -> None:
        """`table['k'] = v`: the code sets the key itself, so a later subscript of it never raises."""
        if isinstance(target, ast.Subscript):
            self.visit(target.value)
            base = self.resolve(target.value)
            key = _const_str(target.slice)
            if base and key is not None:
                self.record(base.table, key, "store", target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._store(elt)
        elif isinstance(target, ast.Attribute):
            self.visit(target.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bind(node.target, self.resolve(node.value))

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        it = node.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and it.args:
            it = it.args[0]
            ref = self.resolve(it)
            if isinstance(node.target, ast.Tuple) and len(node.target.elts) == 2:
                self.bind(node.target.elts[0], None)
                self.bind(node.target.elts[1], ref)
            else:
                self.bind(node.target, None)
        else:
            self.bind(node.target, self.resolve(it))
        for stmt in node.body:
            self.visit(stmt)
        self._conditional(frozenset(), node.orelse)

    visit_AsyncFor = visit_For

    def _conditional(self, guards: frozenset[str], *parts: Sequence[ast.AST] | ast.AST) -> None:
        self.frames.append(guards)
        for part in parts:
            for node in [part] if isinstance(part, ast.AST) else part:
                self.visit(node)
        self.frames.pop()

    def guards(self, test: ast.AST) -> frozenset[str]:
        """The tables a condition proves present; reads of their keys inside are as unconditional as before."""
        if _is_main_guard(test) or (isinstance(test, ast.Call) and _callee_name(test.func) in ALWAYS_TRUE_CALLS):
            return frozenset({ALL})
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            parts = [self.guards(v) for v in test.values]
            if all(ALL in p for p in parts):
                return frozenset({ALL})
            return frozenset().union(*(p for p in parts if ALL not in p))  # `x and is_main_process()`: still x
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.In):
            key, base = _const_str(test.left), self.resolve(test.comparators[0])
            return frozenset({child_table(base.table, key)}) if key is not None and base else frozenset()
        if isinstance(test, (ast.Call, ast.NamedExpr, ast.Name, ast.Subscript)):
            ref = self.resolve(test)
            if ref and ref.origin:
                return frozenset({ref.table})
        return frozenset()

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._dispatch(node)
        reads, start = self.unit.reads, len(self.unit.reads)
        self._conditional(self.guards(node.test), node.body)
        middle = len(reads)
        self._conditional(frozenset(), node.orelse)
        if node.orelse and reads is self.unit.reads:
            self._exhaustive(reads[start:middle], reads[middle:])

    def _exhaustive(self, body: list[Read], orelse: list[Read]) -> None:
        """A key subscripted in every branch of an if/elif/else chain is read whichever branch runs
        (train.py's output_dir): record it as one read at the chain's own level."""
        depth, scope = len(self.frames), self.scope()

        def sure(reads: list[Read]) -> dict[tuple[str, str], Read]:
            return {(r.table, r.key): r for r in reads
                    if r.kind == "sub" and r.scope == scope and set(r.blockers) <= {depth, *self.blockers(r.table)}}

        first, second = sure(body), sure(orelse)
        for both in sorted(set(first) & set(second)):
            r = first[both]
            blockers = self.blockers(r.table)
            self.unit.reads.append(replace(r, blockers=blockers))

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self._conditional(self.guards(node.test), node.body)
        self._conditional(frozenset(), node.orelse)

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        forever = isinstance(node.test, ast.Constant) and node.test.value is True
        self._conditional(frozenset({ALL}) if forever else frozenset(), node.body, node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.visit(node.values[0])
        guards = self.guards(node.values[0]) if isinstance(node.op, ast.And) else frozenset()
        self._conditional(guards, node.values[1:])

    def visit_Try(self, node: ast.Try) -> None:
        for stmt in node.body:
            self.visit(stmt)
        self._conditional(frozenset(), node.orelse, node.handlers)
        for stmt in node.finalbody:
            self.visit(stmt)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self.visit(node.iter)
        self.bind(node.target, self.resolve(node.iter))
        for cond in node.ifs:
            self.visit(cond)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        self.visit(node.slice)
        if not isinstance(node.ctx, ast.Load):
            return
        base = self.resolve(node.value)
        key = _const_str(node.slice)
        if base and key is not None:
            self.record(base.table, key, "sub", node)
        # `DTYPE_MAP[config['dtype']]`: the map's keys are the values upstream accepts
        if isinstance(node.value, ast.Name) and node.value.id in self.dicts:
            index = self.resolve(node.slice)
            self.enum(index.origin if index else None, self.dicts[node.value.id])

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "super"):
            self.unit.supers.add(func.attr)
        callee = _callee_name(func)
        if callee:
            self.calls.append((callee, [self.resolve(a) for a in node.args]))
        if isinstance(func, ast.Attribute):
            kind = func.attr if func.attr in KEY_METHODS else None
            key = _const_str(node.args[0]) if node.args else None
            if kind and key is not None:
                base = self.resolve(func.value)
                if base:
                    self.record(base.table, key, kind, node, _literal(node.args[1]) if len(node.args) > 1 else None)
            elif func.attr in OPEN_METHODS:
                base = self.resolve(func.value)
                if base:
                    self.scan.open_tables.add(base.table)
        for kw in node.keywords:
            if kw.arg is None:
                base = self.resolve(kw.value)
                if base:
                    self.scan.open_tables.add(base.table)

    def visit_Compare(self, node: ast.Compare) -> None:
        self.generic_visit(node)
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            key = _const_str(left)
            if isinstance(op, (ast.In, ast.NotIn)) and key is not None:
                base = self.resolve(right)
                if base:
                    self.record(base.table, key, "in", node)
            else:
                ref = self.resolve(left)
                if isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) and ref:
                    self.enum(ref.origin, _str_values(right))
            left = right

    def _dispatch(self, node: ast.If) -> None:
        """`if model_type == 'flux': from models import flux` -> ('flux', 'models/flux.py')."""
        ref_values = _compared(node.test, self.resolve)
        if not ref_values:
            return
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    target = _module_file(self.scan.root, self.scan.rel, stmt.module, stmt.level, alias.name)
                    if target:
                        self.scan.dispatch.extend((value, target) for value in ref_values)


ALL = "*"


def _is_main_guard(test: ast.AST) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and _const_str(test.comparators[0]) == "__main__")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = fn.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def _callee_name(func: ast.AST) -> str | None:
    """`f(...)`, `mod.f(...)`, `self.f(...)`, `mod.Class(...)`: the name of what is called."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _param_ref(params: dict[tuple[str, str, str], Ref], rel: str, fn: str, arg: str) -> Ref | None:
    bound = params.get((rel, fn, arg))
    if bound:
        return bound
    seed = NAME_SEEDS.get(arg)
    only = ROOT_PARAM_ONLY_IN.get(arg)
    if seed and (only is None or fn.rsplit(".", 1)[-1] in only):
        return Ref(seed)
    return None


def _compared(test: ast.AST, resolve: Callable[[ast.AST], Ref | None]) -> list[str]:
    """The literals `model.type` is compared with in `x == 'a'` / `x == 'a' or x == 'b'` / `x in (...)`."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return [v for value in test.values for v in _compared(value, resolve)]
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.In)):
        ref = resolve(test.left)
        if ref is not None and ref.origin == ("model", "type"):
            return _str_values(test.comparators[0])
    return []


def _str_values(node: ast.AST) -> list[str]:
    one = _const_str(node)
    if one is not None:
        return [one]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for v in (_const_str(e) for e in node.elts) if v is not None]
    return []


def _is_loader(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ROOT_LOADERS


def _module_file(root: Path, rel: str, module: str | None, level: int, name: str | None) -> str | None:
    """The checkout file an import names (`models.base`, `.llm_adapter`, `from models import flux`), if any."""
    parts = [p for p in (module or "").split(".") if p]
    if level:
        base = Path(rel).parent
        for _ in range(level - 1):
            base = base.parent
        parts = [*base.parts, *parts]
    if name is not None:
        parts = [*parts, name]
    if not parts:
        return None
    candidate = Path(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if (root / path).is_file():
            return path.as_posix()
    return None


def source_files(checkout: Path) -> list[Path]:
    """The files scanned, train.py first (its order decides which read is "first")."""
    files: list[Path] = []
    for root in SCAN_ROOTS:
        path = checkout / root
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.py") if p.is_file()))
    return files


def git_commit(checkout: Path) -> str | None:
    """HEAD of the checkout's own git repository; None when it is not one (a copy, or a folder inside some
    other repository, whose HEAD would say nothing about this code)."""
    try:
        proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(checkout).resolve():
        return None
    return lines[1]


@dataclass
class ScanResult:
    commit: str | None
    source: str
    tables: dict[str, dict[str, dict[str, object]]]
    model_types: dict[str, dict[str, dict[str, object]]]
    model_files: dict[str, str]
    enums: dict[str, list[str]]
    open_tables: list[str]
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "scanner": "profiles.dp_scan",
            "commit": self.commit,
            "source": self.source,
            "tables": self.tables,
            "model_types": self.model_types,
            "model_files": self.model_files,
            "enums": self.enums,
            "open_tables": self.open_tables,
            "problems": self.problems,
        }


def _parse(checkout: Path, files: list[Path], problems: list[str]) -> list[tuple[str, ast.Module]]:
    trees = []
    for path in files:
        rel = path.relative_to(checkout).as_posix()
        try:
            trees.append((rel, ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=rel)))
        except (SyntaxError, ValueError, OSError) as exc:
            problems.append(f"{rel}: not scanned ({type(exc).__name__}: {exc})")
    return trees


def _dict_literals(trees: list[tuple[str, ast.Module]]) -> dict[str, list[str]]:
    """Module-level `NAME = {'a': ..., 'b': ...}` maps, for `NAME[config['x']]` enums."""
    found: dict[str, list[str]] = {}
    for _rel, tree in trees:
        for stmt in tree.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Dict) and stmt.value.keys):
                keys = [_const_str(k) for k in stmt.value.keys]
                if all(k is not None for k in keys):
                    found[stmt.targets[0].id] = [k for k in keys if k is not None]
    return found


def _self_attrs(root: Path, trees: list[tuple[str, ast.Module]], dicts: dict[str, list[str]]) -> dict[str, Ref]:
    """`self.X = <table>` anywhere in the checkout; an attribute bound to two different tables is dropped."""
    functions = [(rel, fn, _own_assigns(fn)) for rel, tree in trees for fn in ast.walk(tree)
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))]
    attrs: dict[str, Ref] = {k: Ref(v) for k, v in ATTR_SEEDS.items()}
    for _round in range(3):  # `self.model_config = self.config['model']` needs `self.config` first
        seen: dict[str, set[Ref]] = {}
        for rel, fn, assigns in functions:
            if not assigns:
                continue
            probe = _Scanner(FileScan(rel, root), attrs, dicts)
            probe.scopes = [{}, {arg: _param_ref({}, rel, fn.name, arg) for arg in _params(fn)}]
            for node in assigns:
                for target in node.targets:
                    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                            and target.value.id == "self"):
                        ref = probe.resolve(node.value)
                        if ref:  # kept with its origin: `self.mode == 'x'` is an enum of the key it came from
                            seen.setdefault(target.attr, set()).add(ref)
                if isinstance(node.targets[0], ast.Name):
                    probe.bind(node.targets[0], probe.resolve(node.value), _is_loader(node.value))
        new = {k: Ref(v) for k, v in ATTR_SEEDS.items()}
        new.update({attr: next(iter(refs)) for attr, refs in seen.items() if len({r.table for r in refs}) == 1})
        if new == attrs:
            break
        attrs = new
    return attrs


def _own_assigns(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Assign]:
    """The assignments in a function's own body (nested functions are walked on their own), in source order."""
    found: list[ast.Assign] = []
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Assign):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _defs(trees: list[tuple[str, ast.Module]]) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Callable name -> (file, qualified name, parameters as a call passes them) for top-level functions,
    methods (without self/cls) and classes (their __init__)."""
    found: dict[str, list[tuple[str, str, list[str]]]] = {}
    for rel, tree in trees:
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.setdefault(stmt.name, []).append((rel, stmt.name, _params(stmt)))
            elif isinstance(stmt, ast.ClassDef):
                for item in stmt.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        params = _params(item)
                        bound = params[1:] if params and params[0] in ("self", "cls") else params
                        name = stmt.name if item.name == "__init__" else item.name
                        found.setdefault(name, []).append((rel, f"{stmt.name}.{item.name}", bound))
    return found


def _bind_params(calls: list[tuple[str, list[Ref | None]]],
                 defs: dict[str, list[tuple[str, str, list[str]]]]) -> dict[tuple[str, str, str], Ref]:
    """A parameter that every resolved call site passes the same table to means that table."""
    seen: dict[tuple[str, str, str], set[Ref]] = {}
    for callee, args in calls:
        for rel, qual, params in defs.get(callee, []):
            for param, ref in zip(params, args, strict=False):
                if ref is not None:
                    seen.setdefault((rel, qual, param), set()).add(ref)
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}  # one meaning at every call site


def _merge(reads: list[Read], file_order: dict[str, int]) -> dict[str, object]:
    """One key's reads -> required / default / first read."""
    ordered = sorted(reads, key=lambda r: (file_order.get(r.file, 1 << 30), r.line))
    # A key the code sets itself (setdefault, assignment) is only missing for a read earlier in that same
    # function; set in another function (a `_set_defaults`), it is taken as set before any read.
    # A key the code itself tests for (`'adapter' in config`, `.get`) is optional by design, even where some
    # code path subscripts it unguarded (flux's save_adapter reads config['adapter'] only when training one).
    sets = [r for r in ordered if r.kind in ("setdefault", "store")]
    tested = any(r.kind in ("in", "get", "pop") for r in ordered)
    required = not tested and any(
        r.kind == "sub" and not r.conditional
        and not any(s.scope != r.scope or s.line < r.line for s in sets)
        for r in ordered
    )
    default = next((r.default for r in ordered if r.kind in ("get", "setdefault", "pop") and r.default is not None),
                   None)
    first = next((r for r in ordered if r.kind != "store"), ordered[0])
    return {"required": required, "default": default, "where": f"{first.file}:{first.line}"}


def _group(reads: list[Read]) -> dict[str, dict[str, list[Read]]]:
    grouped: dict[str, dict[str, list[Read]]] = {}
    for r in reads:
        grouped.setdefault(r.table, {}).setdefault(r.key, []).append(r)
    return grouped


def _lookup(scans: dict[str, FileScan], rel: str, name: str) -> tuple[str, str] | None:
    """Where a name used in `rel` is defined: that file's own top level, or the checkout file it imports from."""
    scan = scans.get(rel)
    if scan is None:
        return None
    if name in scan.classes or name in scan.units:
        return rel, name
    if name in scan.imports:
        return scan.imports[name]
    return None


def _mro(scans: dict[str, FileScan], rel: str, cls: str) -> list[tuple[str, str]]:
    """Depth-first, left-first base chain (enough for upstream's single inheritance), checkout classes only."""
    chain: list[tuple[str, str]] = []
    todo = [(rel, cls)]
    while todo:
        here = todo.pop(0)
        if here in chain or here[0] not in scans or here[1] not in scans[here[0]].classes:
            continue
        chain.append(here)
        bases = [_lookup(scans, here[0], b) for b in scans[here[0]].classes[here[1]].bases]
        todo = [b for b in bases if b] + todo
    return chain


def _reachable(scans: dict[str, FileScan], start: str) -> set[tuple[str, str]]:
    """The code a model module runs: its functions, its classes' methods as resolved through their bases (an
    override hides the base's method unless it calls super()), and the helpers and classes those name."""
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = []

    def instantiate(rel: str, cls: str) -> None:
        chain = _mro(scans, rel, cls)
        todo.extend((r, c) for r, c in chain)  # class bodies
        for r, c in chain:
            for method in scans[r].classes[c].methods:
                definer = next((d for d in chain if method in scans[d[0]].classes[d[1]].methods), None)
                if definer == (r, c):
                    todo.append((r, f"{c}.{method}"))

    def use(rel: str, name: str) -> None:
        found = _lookup(scans, rel, name)
        if found and found[0] in scans:
            if found[1] in scans[found[0]].classes:
                if ("class", f"{found[0]}:{found[1]}") not in seen:
                    seen.add(("class", f"{found[0]}:{found[1]}"))
                    instantiate(*found)
            else:
                todo.append(found)

    if start not in scans:
        return seen
    for name in scans[start].units:
        if "." not in name:
            use(start, name)
    while todo:
        rel, name = todo.pop()
        if (rel, name) in seen or name not in scans[rel].units:
            continue
        seen.add((rel, name))
        unit = scans[rel].units[name]
        for ref in unit.names:
            use(rel, ref)
        if "." in name and unit.supers:
            cls, _method = name.split(".", 1)
            chain = _mro(scans, rel, cls)[1:]
            for method in unit.supers:
                definer = next((d for d in chain if method in scans[d[0]].classes[d[1]].methods), None)
                if definer:
                    todo.append((definer[0], f"{definer[1]}.{method}"))
    return {item for item in seen if item[0] != "class"}


def scan(checkout: Path | str, commit: str | None = None, source: str | None = None) -> ScanResult:
    root = Path(checkout).resolve()
    problems: list[str] = []
    if not (root / "train.py").is_file():
        problems.append(f"{root} has no train.py: not a diffusion-pipe checkout")
    files = source_files(root)
    trees = _parse(root, files, problems)
    file_order = {rel: i for i, (rel, _t) in enumerate(trees)}
    dicts = _dict_literals(trees)
    attrs = _self_attrs(root, trees, dicts)
    defs = _defs(trees)
    params: dict[tuple[str, str, str], Ref] = {}
    scans: dict[str, FileScan] = {}
    calls: dict[str, list[tuple[str, list[Ref | None]]]] = {}
    todo = {rel for rel, _tree in trees}
    for _round in range(6):  # a table handed on through calls: train.py -> Dataset -> DirectoryDataset
        for rel, tree in trees:
            if rel in todo:  # a file's scan depends only on its own parameters' bindings
                fs = FileScan(rel, root)
                scanner = _Scanner(fs, attrs, dicts, params)
                scanner.visit(tree)
                calls[rel], scans[rel] = scanner.calls, fs
        bound = _bind_params([c for rel, _t in trees for c in calls[rel]], defs)
        todo = {key[0] for key, _table in set(bound.items()) ^ set(params.items())}
        params = bound
        if not todo:
            break

    model_files: dict[str, str] = {}
    for fs in scans.values():
        for mtype, target in fs.dispatch:
            model_files.setdefault(mtype, target)
    reach = {mtype: _reachable(scans, target) for mtype, target in model_files.items()}
    typed_units = set().union(*reach.values()) if reach else set()

    all_reads = [r for fs in scans.values() for u in fs.units.values() for r in u.reads]
    common_model = [r for rel, fs in scans.items() for name, u in fs.units.items()
                    if (rel, name) not in typed_units for r in u.reads if r.table == "model"]
    per_type = {mtype: [r for rel, name in units for r in scans[rel].units[name].reads if r.table == "model"]
                for mtype, units in reach.items()}

    tables: dict[str, dict[str, dict[str, object]]] = {}
    for table, keys in sorted(_group([r for r in all_reads if r.table != "model"]).items()):
        tables[table] = {key: _merge(rs, file_order) for key, rs in sorted(keys.items())}
    common_keys = {r.key for r in common_model}
    type_keys = [{r.key for r in reads} for reads in per_type.values()]
    if type_keys:
        common_keys |= set.intersection(*type_keys)
    model_reads = [r for r in all_reads if r.table == "model"]
    model_table: dict[str, dict[str, object]] = {}
    for key in sorted(common_keys):
        rs = [r for r in model_reads if r.key == key]
        info = _merge([r for r in common_model if r.key == key] or rs, file_order)
        # required for the common table only when every type's run raises without it
        info["required"] = _merge([r for r in common_model if r.key == key], file_order)["required"] if any(
            r.key == key for r in common_model) else False
        if not info["required"] and per_type and all(
                _merge([r for r in reads + common_model if r.key == key], file_order)["required"]
                for reads in per_type.values()):
            info["required"] = True
        model_table[key] = info
    tables["model"] = model_table
    model_types: dict[str, dict[str, dict[str, object]]] = {}
    for mtype, reads in sorted(per_type.items()):
        grouped = _group(reads + [r for r in common_model if r.key in {x.key for x in reads}]).get("model", {})
        model_types[mtype] = {key: _merge(rs, file_order) for key, rs in sorted(grouped.items())}

    enums: dict[str, set[str]] = {}
    for fs in scans.values():
        for name, values in fs.enums.items():
            enums.setdefault(name, set()).update(values)
    open_tables = sorted({t for fs in scans.values() for t in fs.open_tables})
    return ScanResult(
        commit=commit if commit is not None else git_commit(root),
        source=source or str(root),
        tables=dict(sorted(tables.items())),
        model_types=model_types,
        model_files=dict(sorted(model_files.items())),
        enums={k: sorted(v) for k, v in sorted(enums.items())},
        open_tables=open_tables,
        problems=problems,
    )


def _print_text(result: ScanResult) -> None:
    print(f"diffusion-pipe at {result.source} (commit {result.commit or 'unknown'})")
    for problem in result.problems:
        print(f"  problem: {problem}")
    for table, keys in result.tables.items():
        print(f"[{table}]" + (" (open: passed on whole)" if table in result.open_tables else ""))
        for key, info in keys.items():
            mark = "required" if info["required"] else "optional"
            default = "" if info["default"] is None else f" = {info['default']!r}"
            print(f"  {key}{default}  {mark}  {info['where']}")
    for mtype, keys in result.model_types.items():
        print(f"[model type {mtype}] {result.model_files.get(mtype, '')}")
        for key, info in keys.items():
            if key not in result.tables.get("model", {}):
                print(f"  {key}  {'required' if info['required'] else 'optional'}  {info['where']}")
    for name, values in result.enums.items():
        print(f"enum {name}: {', '.join(values)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiles.dp_scan", description=__doc__.split("\n")[0])
    parser.add_argument("checkout", help="a diffusion-pipe checkout (the folder with train.py)")
    parser.add_argument("--json", action="store_true", help="print the knowledge as JSON")
    parser.add_argument("--commit", help="record this commit (for a copy that is not a git repository)")
    parser.add_argument("--source", help="record this label instead of the checkout's path")
    args = parser.parse_args(argv)
    result = scan(args.checkout, commit=args.commit, source=args.source)
    if args.json:
        print(json.dumps(result.to_json(), indent=1, sort_keys=False))
    else:
        _print_text(result)
    return 1 if not (Path(args.checkout) / "train.py").is_file() else 0


if __name__ == "__main__":
    sys.exit(main())
