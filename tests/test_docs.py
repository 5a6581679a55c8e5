"""The public API is documented: a docstring on every public function and class, a docment on every parameter.

The checks live in `tools/doc_audit.py` (run it to list every problem at once); these tests only import the modules.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from doc_audit import missing_docstrings, undocumented_params, misread_returns


def test_public_names_have_docstrings():
    missing = missing_docstrings()
    assert not missing, f"{len(missing)} public functions/classes without a docstring:\n  " + '\n  '.join(missing)


def test_parameters_have_docments():
    missing = undocumented_params()
    assert not missing, (f"{len(missing)} public functions/classes with parameters lacking a docment "
                         "(a `# comment` after the parameter, in the notebook):\n  " + '\n  '.join(missing))


def test_kwargs_comment_not_read_as_return():
    misread = misread_returns()
    assert not misread, ("the `**kwargs` comment of these functions is read as their return's docment; "
                         "give the `) -> T:` line its own comment:\n  " + '\n  '.join(misread))
