"""Move the imports of test cells into the notebook's first test-imports cell, so nbdev's docs processing
(which runs every cell holding an import, in a fresh kernel, without the cells before it that hold none)
never runs a test cell out of context.

    python tools/hoist_imports.py nbs/04_vision_core.ipynb ...   # rewrites the notebooks, prints what moved
    python tools/hoist_imports.py --check nbs/*.ipynb            # exit 1 if a test cell still holds an import

Only top-level `import`/`from ... import` statements of non-exported code cells move; imports nested in a
function or block are reported (`--check` fails on them) for a person to move.
"""
import ast, json, sys
from pathlib import Path

EXPORT = ('#| export', '#|export', '#| exporti', '#| exports', '#| exec_doc')


def _src(cell) -> str: return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def _set(cell, text: str): cell['source'] = text.splitlines(keepends=True)


def _directives(text: str) -> list: return [l.strip() for l in text.splitlines() if l.strip().startswith('#|')]


def _is_export(text: str) -> bool: return any(d.startswith(EXPORT) for d in _directives(text))


def _no_eval(text: str) -> bool: return any(d.replace(' ', '') == '#|eval:false' for d in _directives(text))


def _imports(tree) -> tuple:
    "(top-level import nodes, nested import nodes)"
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    nested = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in top]
    return top, nested


def _is_future(n) -> bool: return isinstance(n, ast.ImportFrom) and n.module == '__future__'


def process(path: Path, check: bool=False) -> list:
    nb = json.loads(path.read_text())
    cells = [c for c in nb['cells'] if c['cell_type'] == 'code']
    problems, target, moved, emptied = [], None, [], []
    for c in cells:
        text = _src(c)
        if not text.strip() or _is_export(text) or _no_eval(text): continue
        try: tree = ast.parse('\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in text.splitlines()))
        except SyntaxError: continue
        top, nested = _imports(tree)
        if target is None:
            if top or nested: target = c   # the first test cell with imports gathers them all
            continue
        for n in nested: problems.append(f"{path.name}: nested import in a test cell: {ast.get_source_segment(text, n)!r}")
        if not top: continue
        if check:
            problems.append(f"{path.name}: test cell imports {ast.get_source_segment(text, top[0])!r}"); continue
        lines = text.splitlines(keepends=True)
        drop, here = set(), []
        for n in sorted(top, key=lambda n: (n.lineno, n.col_offset), reverse=True):
            if _is_future(n): continue
            here.insert(0, ast.get_source_segment(text, n))
            if n.lineno == n.end_lineno:   # cut the statement out of its line (it may share it: `import x; f(x)`)
                line = lines[n.lineno - 1]
                rest = (line[:n.col_offset] + line[n.end_col_offset:]).strip()
                rest = rest.lstrip(';').strip()
                if rest and not rest.startswith('#'): lines[n.lineno - 1] = line[:len(line) - len(line.lstrip())] + rest + '\n'
                else: drop.add(n.lineno - 1)
            else: drop.update(range(n.lineno - 1, n.end_lineno))
        moved.extend(here)
        _set(c, ''.join(l for i, l in enumerate(lines) if i not in drop).strip('\n'))
        if not _src(c).strip(): emptied.append(id(c))
    if moved and target is not None:
        have = set(_src(target).splitlines())
        new = [m for m in dict.fromkeys(moved) if m not in have]
        if new:   # after the target cell's own last top-level import
            t = _src(target).rstrip('\n'); lines = t.splitlines()
            tops = [n for n in ast.parse(t).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            at = max((n.end_lineno for n in tops), default=len(lines))
            _set(target, '\n'.join(lines[:at] + new + lines[at:]))
        nb['cells'] = [c for c in nb['cells'] if id(c) not in emptied]
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
        for m in new: print(f"{path.name}: moved {m.splitlines()[0]}")
    return problems


if __name__ == '__main__':
    check = '--check' in sys.argv
    problems = [p for f in sys.argv[1:] if f != '--check' for p in process(Path(f), check)]
    for p in problems: print(p)
    sys.exit(1 if problems and check else 0)
