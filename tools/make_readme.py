"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as fenced Python).

nbdev's own `nbdev-readme` needs Quarto; this small script gives the same README without it.
    python tools/make_readme.py
"""
import json
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source'])
    if src.lstrip().startswith('#|'): continue
    parts.append(src if cell['cell_type'] == 'markdown' else f'```python\n{src}\n```')
text = '\n\n'.join(parts) + '\n'
text = text.replace('](images/', '](nbs/images/')   # pictures live beside the notebooks
text = '<!-- generated from nbs/index.ipynb by tools/make_readme.py; edit the notebook -->\n\n' + text
(root / 'README.md').write_text(text)
