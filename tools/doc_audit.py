"""Check that fastMONAI's public API is documented: a docstring on every public function and class, and an nbdev
"docment" (a `# comment` after the parameter in the signature) on every parameter.

    python tools/doc_audit.py      # prints the problems; exit status 1 when there are any, 0 when clean

Public names are those in each module's `__all__` that the module itself defines (re-exports are checked where
they are defined). For a class, only a constructor the class defines itself is checked (`__init__`, else `__new__`):
one inherited from fastai/torch/another class is not its to document. A dataclass with a generated `__init__` is
checked field by field (a comment after each field), a NamedTuple likewise. `*args` and `**kwargs` are not required
to have one, but a `**kwargs` comment must not be the one docments reads as the return's (see `kwargs_read_as_return`).
`tests/test_docs.py` runs the same checks.
"""
import dataclasses, importlib, inspect, io, pkgutil, sys, textwrap, tokenize, warnings

SKIP_MODULES = ('vision_all',)   # only re-exports
NOT_PARAMS = ('self', 'cls', 'return')

def public_objects():
    "Yield `(module name, public name, object)` for the functions and classes each fastMONAI module defines and exports"
    import fastMONAI
    for m in sorted(pkgutil.iter_modules(fastMONAI.__path__), key=lambda m: m.name):
        if m.name.startswith('_') or m.name in SKIP_MODULES: continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            mod = importlib.import_module(f'fastMONAI.{m.name}')
        for name in getattr(mod, '__all__', []):
            o = getattr(mod, name, None)
            if not (inspect.isfunction(o) or inspect.isclass(o)): continue
            if getattr(o, '__module__', '') != mod.__name__: continue
            yield m.name, name, o

def _own(cls, attr):
    "`cls`'s own `attr` (a function whose `__qualname__` says this class defined it), else None"
    f = vars(cls).get(attr)
    if isinstance(f, (staticmethod, classmethod)): f = f.__func__
    if not inspect.isfunction(f): return None
    return f if f.__qualname__.rsplit('.', 1)[0] == cls.__qualname__ else None

def documented_callable(o):
    "What to read `o`'s parameter docs from: `o` itself (a function or a dataclass with a generated `__init__`), its own constructor, or None"
    if inspect.isfunction(o): return o
    f = _own(o, '__init__') or _own(o, '__new__')
    if f is not None and _generated(f): return o   # @dataclass's __init__ or NamedTuple's __new__: the fields carry the comments
    return f

def _generated(f): return not f.__code__.co_filename.endswith('.py')

def _comment_lines(src):
    "Numbers of the lines of `src` that end with a comment"
    return {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}

def _undocumented_fields(cls):
    "Fields of a NamedTuple without a comment on their line (docments reads dataclass fields, not these)"
    import ast
    src = textwrap.dedent(inspect.getsource(cls))
    comments = _comment_lines(src)
    body = ast.parse(src).body[0].body
    return [a.target.id for a in body if isinstance(a, ast.AnnAssign) and a.lineno not in comments]

def undocumented(o):
    "The names of `o`'s parameters that have no docment (`*args`, `**kwargs`, `self`, `cls` and the return value aside)"
    from fastcore.docments import docments
    f = documented_callable(o)
    if f is None: return []
    if inspect.isclass(f) and not dataclasses.is_dataclass(f): return _undocumented_fields(f)
    try: d = docments(f, full=True)
    except Exception as e: return [f'<docments failed: {e!r}>']
    target = f.__init__ if inspect.isclass(f) else f
    try: kinds = {k: p.kind for k, p in inspect.signature(target).parameters.items()}
    except (TypeError, ValueError): kinds = {}
    var = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [k for k, v in d.items() if k not in NOT_PARAMS and kinds.get(k) not in var and not v.get('docment')]

def kwargs_read_as_return(o):
    """Whether the comment on `o`'s `**kwargs` line is read as its return's docment. docments skips `**kwargs`: on `**kw) -> T: # c`,
    or with no comment on the `) -> T:` line below `**kw, # c`, `c` becomes the return's, and nbdev shows it as what `o` returns."""
    import ast
    f = documented_callable(o)
    if f is None or inspect.isclass(f): return False
    try: src = textwrap.dedent(inspect.getsource(f))
    except (OSError, TypeError): return False
    defn = ast.parse(src).body[0]
    if not isinstance(defn, (ast.FunctionDef, ast.AsyncFunctionDef)) or defn.args.kwarg is None or defn.returns is None: return False
    comments = _comment_lines(src)
    kw, line = defn.args.kwarg.lineno, defn.returns.lineno
    if kw == line: return line in comments
    params = {a.lineno for a in [*defn.args.posonlyargs, *defn.args.args, *defn.args.kwonlyargs, defn.args.vararg] if a is not None}
    if line in comments: return False
    line -= 1
    while line in comments and line not in params:   # the lines docments takes for the return's docment
        if line == kw: return True
        line -= 1
    return False

def missing_docstrings():
    "`module.name` of each public function or class without a docstring"
    return [f'{m}.{n}' for m, n, o in public_objects() if not (o.__doc__ or '').strip()]

def undocumented_params():
    "`module.name: [params]` for each public function or class with parameters lacking a docment"
    return [f'{m}.{n}: {miss}' for m, n, o in public_objects() if (miss := undocumented(o))]

def misread_returns():
    "`module.name` of each public function whose `**kwargs` comment docments takes for the return's (give `) -> T:` its own comment)"
    return [f'{m}.{n}' for m, n, o in public_objects() if kwargs_read_as_return(o)]

def main():
    nodoc, noparam, misread = missing_docstrings(), undocumented_params(), misread_returns()
    if nodoc: print(f'{len(nodoc)} public names without a docstring:', *nodoc, sep='\n  ')
    if noparam: print(f'{len(noparam)} public names with undocumented parameters:', *noparam, sep='\n  ')
    if misread: print(f"{len(misread)} public functions whose **kwargs comment is read as the return's (comment the `) -> T:` line):",
                      *misread, sep='\n  ')
    if not (nodoc or noparam or misread): print('fastMONAI public API: every name has a docstring and every parameter a docment')
    return 1 if nodoc or noparam or misread else 0

if __name__ == '__main__':
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's fastMONAI, not an installed one
    sys.exit(main())
