"""Nothing silently wrong, across modules: predictions never replace files unasked, and the tables the downloaders
hand back work with NumPy code (the paper's `compute_class_weight(..., y=y_train.values.reshape(-1))`) whether
pandas stores text with pyarrow or not.

The checks that belong to one module (the cache, the command line, model and variables files, mirrors) are in
that module's notebook.
"""
import os, subprocess, sys, textwrap, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastMONAI.testing import make_phantom, write_volume


def threshold_net(bias: float = -0.5) -> nn.Module:
    "logit = image + bias: a segmenter that needs no training."
    conv = nn.Conv3d(1, 1, 1)
    with torch.no_grad(): conv.weight.fill_(1.); conv.bias.fill_(bias)
    return conv


@pytest.fixture
def scans(tmp_path):
    "Three phantoms in three orientations, each with a stale file already where its prediction would go."
    paths = []
    for i, orientation in enumerate(('RAS', 'LPS', 'PIL')):
        image, _, affine = make_phantom((12, 10, 8), orientation=orientation, seed=i)
        paths.append(write_volume(tmp_path/'scans'/f'scan_{i}.nii.gz', image, affine))
    return paths


def existing_outputs(folder, names, rng) -> dict:
    "Files at the output names, with random bytes; returns `{path: bytes}`."
    folder.mkdir(parents=True, exist_ok=True)
    res = {}
    for n in names:
        (folder/n).write_bytes(rng.bytes(int(rng.integers(10, 200)))); res[folder/n] = (folder/n).read_bytes()
    return res


def unchanged(files: dict) -> bool: return all(p.read_bytes() == b for p, b in files.items())


def test_inference_never_replaces_a_file_unasked(scans, tmp_path):
    from fastMONAI.vision_inference import inference
    from fastMONAI.vision_core import med_img_reader, MedMask
    rng = np.random.default_rng(0)
    out = tmp_path/'out'
    stale = existing_outputs(out, [f'pred_{p.name}' for p in scans], rng)
    for p in scans:
        with pytest.raises(FileExistsError, match=f'pred_{p.name}: already exists'):
            inference(threshold_net(), reorder=True, resample=1.5, fn=str(p), save_path=out)
    assert unchanged(stale) and sorted(out.iterdir()) == sorted(stale)
    for p in scans:                                        # asked: replaced by a real prediction on the scan's grid
        written = inference(threshold_net(), reorder=True, resample=1.5, fn=str(p), save_path=out, overwrite=True)
        assert written == out/f'pred_{p.name}' and med_img_reader(written, dtype=MedMask).shape == med_img_reader(p).shape


def test_patch_inference_never_replaces_a_file_unasked(scans, tmp_path):
    from fastMONAI.vision_patch import PatchConfig, patch_inference
    rng = np.random.default_rng(1)
    out = tmp_path/'out'
    stale = existing_outputs(out, [f'pred_{scans[0].name}', f'pred_{scans[2].name}'], rng)
    config = PatchConfig(patch_size=8, reorder=True, resample=1.5, aggregation_mode='crop')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        results = patch_inference(threshold_net(), config, [str(p) for p in scans], save_dir=out)
    assert results[0] is None and results[2] is None and results[1] == out/f'pred_{scans[1].name}'
    messages = [str(w.message) for w in caught]
    for i in (0, 2): assert any(f'pred_{scans[i].name}: already exists' in m for m in messages), messages
    assert unchanged(stale)
    results = patch_inference(threshold_net(), config, [str(p) for p in scans], save_dir=out, overwrite=True)
    assert all(r is not None for r in results) and not unchanged(stale)


def test_cli_predict_never_replaces_a_file_unasked(scans, tmp_path):
    from fastMONAI.cli import main
    from fastMONAI.vision_export import create_model, save_model
    model = save_model(create_model('UNet', spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), strides=(1,)),
                       tmp_path/'model', task='segmentation', reorder=True, resample=1.5)
    rng = np.random.default_rng(2)
    out = tmp_path/'out'
    stale = existing_outputs(out, [f'pred_{p.name}' for p in scans[:2]], rng)
    assert main(['predict', str(model), str(scans[0].parent), '-o', str(out), '--quiet']) == 1
    assert unchanged(stale) and (out/f'pred_{scans[2].name}').exists()    # the others are still done
    assert main(['predict', str(model), str(scans[0].parent), '-o', str(out), '--quiet', '--overwrite']) == 0
    assert not any(p.read_bytes() == b for p, b in stale.items())


# ---------------------------------------------------------------------------------------------------------
# Text columns: with pandas 3 and pyarrow, `pd.read_csv` gives Arrow-backed strings whose `.values` cannot reshape.

PAPER_CELL = """
import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from fastMONAI.external_data import download_NoduleMNIST3D, download_medmnist3d_dataset
df, test_df = download_NoduleMNIST3D(max_workers=1)
y_train = df[~df.is_val].labels
weights = compute_class_weight(class_weight='balanced', classes=np.unique(y_train), y=y_train.values.reshape(-1))
assert sorted(np.unique(y_train)) == ['b', 'm'] and len(weights) == 2
for table in (df, test_df, *download_medmnist3d_dataset('NoduleMNIST3D', max_workers=1)):
    for c in table.columns: table[c].values.reshape(-1)
print('pyarrow' in sys.modules, df.labels.dtype)
"""


def test_downloaded_tables_work_with_numpy_code(offline_workdir):
    pytest.importorskip('pyarrow')               # in the dev extra: the case that failed
    import pandas as pd
    exec(PAPER_CELL, {'sys': sys})
    df, _ = __import__('fastMONAI.external_data', fromlist=['x']).download_NoduleMNIST3D(max_workers=1)
    assert df.labels.dtype == object and df.img_path.dtype == object
    # and the same without pyarrow (pandas then stores text in Python objects), in a fresh process
    block = textwrap.dedent("""
        import sys
        class NoPyarrow:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'pyarrow': raise ImportError('pyarrow is not installed (blocked for this test)')
        sys.meta_path.insert(0, NoPyarrow())
        """)
    script = block + PAPER_CELL
    res = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=offline_workdir,
                         env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[0] == 'False', res.stdout
