"""Convert between nbdev notebooks and a plain-text "percent" script, for editing notebooks as text.

    python tools/nbpy.py to-py nbs/01_vision_core.ipynb   # writes nbs/01_vision_core.pct.py
    python tools/nbpy.py to-nb nbs/01_vision_core.pct.py  # writes nbs/01_vision_core.ipynb

Cell ids are derived from the cell's content, so exports are reproducible.
Cells are separated by lines `# %%` (code) or `# %% [markdown]` (markdown; every line of the
markdown cell is prefixed with `# `). The notebook stays the source of truth: the .pct.py files are
scratch copies (git-ignored) to edit and convert back.
"""
import hashlib, json, sys
from pathlib import Path

def nb_to_pct(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for cell in nb['cells']:
        src = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
        if cell['cell_type'] == 'markdown':
            out.append('# %% [markdown]\n' + '\n'.join(('# ' + l) if l else '#' for l in src.split('\n')))
        else:
            out.append('# %%\n' + src)
    return '\n\n'.join(out) + '\n'

def pct_to_nb(text):
    cells, cur, kind, ids = [], None, None, set()
    def flush():
        if cur is None: return
        lines = cur[:]
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if kind == 'markdown': lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
        src = '\n'.join(lines)
        src_list = [l + '\n' for l in src.split('\n')]
        if src_list: src_list[-1] = src_list[-1][:-1]
        cid = hashlib.sha1(f'{kind}:{src}'.encode()).hexdigest()[:8]
        while cid in ids: cid = hashlib.sha1(cid.encode()).hexdigest()[:8]
        ids.add(cid)
        cell = {'cell_type': kind, 'id': cid, 'metadata': {}, 'source': src_list}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    for line in text.split('\n'):
        if line.startswith('# %%'):
            flush()
            kind, cur = ('markdown' if '[markdown]' in line else 'code'), []
        elif cur is not None: cur.append(line)
    flush()
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}

if __name__ == '__main__':
    cmd, path = sys.argv[1], Path(sys.argv[2])
    if cmd == 'to-py':
        path.with_suffix('.pct.py').write_text(nb_to_pct(path))
    elif cmd == 'to-nb':
        name = path.name[:-len('.pct.py')] if path.name.endswith('.pct.py') else path.stem
        (path.parent / f'{name}.ipynb').write_text(json.dumps(pct_to_nb(path.read_text()), indent=1, ensure_ascii=False, sort_keys=True) + '\n')
    else: raise SystemExit(__doc__)
