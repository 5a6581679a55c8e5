"""Shared fixtures for the end-to-end tests: small phantom studies on disk and a local data mirror.

Every test trains a tiny model on tiny generated volumes (CPU, seconds). The studies are written once per
session; tests that change files work in their own `tmp_path`.
"""
import hashlib, io, os, tempfile, zipfile
from pathlib import Path

import matplotlib
matplotlib.use('Agg')  # before anything imports pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from fastMONAI.testing import make_phantom, make_phantom_dataset, write_volume
from fastMONAI.external_data import write_mirror_checksums

ORIENTATIONS = ('RAS', 'LPS', 'PIR')
SHAPE, SPACING = (20, 20, 16), (1., 1., 1.5)   # anisotropic voxels; resampled to 1.5 mm when read


def pytest_configure(config):
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


def split_every(n: int, k: int=4) -> list:
    """Every `k`-th pair of subjects is held out. `make_phantom_dataset` alternates small/large and cycles the
    orientations, so pairs keep both classes and all orientations in both splits."""
    return [(i // 2) % k == k - 1 for i in range(n)]


@pytest.fixture(scope='session')
def phantom_study(tmp_path_factory) -> pd.DataFrame:
    "Binary phantoms in three storage orientations with anisotropic voxels and a noisy image."
    df = make_phantom_dataset(tmp_path_factory.mktemp('phantoms'), n=40, shape=SHAPE, spacing=SPACING,
                              orientations=ORIENTATIONS, noise=1.0, seed=1)
    df['is_val'] = split_every(len(df))
    return df


def segmentation_phantoms(folder, n: int, n_labels: int=1, noise: float=0.5, seed: int=0) -> pd.DataFrame:
    """Phantoms whose ellipsoid fills 10-20 % of the volume (semi-axes 50-80 % of the half extent).

    `make_phantom_dataset`'s small ellipsoids cover under 1 % of the volume, a few dozen voxels after
    resampling: fine for telling sizes apart, too few for a tiny network to learn to segment in seconds.
    """
    rng, rows = np.random.default_rng(seed), []
    half = np.array(SHAPE) * np.array(SPACING) / 2       # RAS and PIR storage both span about this in world mm
    for i in range(n):
        orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
        image, mask, affine = make_phantom(SHAPE, SPACING, orientation, seed=seed * 1000 + i, n_labels=n_labels, noise=noise,
                                           radius=half * rng.uniform(0.5, 0.8, 3), center=half * rng.uniform(-0.15, 0.15, 3))
        img_path = write_volume(Path(folder)/'images'/f'subject_{i:03d}.nii.gz', image, affine)
        mask_path = write_volume(Path(folder)/'masks'/f'subject_{i:03d}.nii.gz', mask, affine, dtype=np.uint8)
        rows.append(dict(img_path=str(img_path), mask_path=str(mask_path), orientation=orientation))
    df = pd.DataFrame(rows)
    df['is_val'] = split_every(n)
    return df


@pytest.fixture(scope='session')
def segmentation_study(tmp_path_factory) -> pd.DataFrame:
    "Binary masks, three storage orientations, anisotropic voxels."
    return segmentation_phantoms(tmp_path_factory.mktemp('segmentation'), n=24, seed=2)


@pytest.fixture(scope='session')
def multiclass_study(tmp_path_factory) -> pd.DataFrame:
    "Two concentric labels (background 0, shell 1, core 2)."
    return segmentation_phantoms(tmp_path_factory.mktemp('multiclass'), n=24, n_labels=2, seed=3)


def drawn_axes(result=None) -> list:
    "The axes of the current figure (or of `result`, a list/array of axes) that hold at least one image."
    axes = list(np.array(result).flatten()) if result is not None and not isinstance(result, plt.Figure) else plt.gcf().axes
    return [ax for ax in axes if ax.images]


# ---------------------------------------------------------------------------------------------------------
# A local data mirror in the upstream formats (see `fastMONAI.external_data`): `FASTMONAI_DATA_MIRROR`
# points at a folder holding `nodulemnist3d.npz`, `ixi_tiny.zip` and `IXI.xls`, with tiny phantom volumes.

def _nodule_volume(malignant: bool, seed: int, size: int=28) -> np.ndarray:
    "A 28³ uint8 volume like MedMNIST's: a large bright blob for 'm', a small one for 'b'."
    half = size / 2
    radius = np.full(3, half * (0.55 if malignant else 0.25))
    image, _, _ = make_phantom((size,) * 3, seed=seed, radius=radius, noise=0.3)
    return np.clip((image + 1) * 80, 0, 255).astype(np.uint8)


def make_nodulemnist3d_npz(path, counts=dict(train=80, val=16, test=8)) -> Path:
    "`nodulemnist3d.npz` with MedMNIST v2 keys `{split}_images` [N, 28, 28, 28] uint8, `{split}_labels` [N, 1]."
    arrays, seed = {}, 0
    for split, n in counts.items():
        labels = np.array([i % 2 for i in range(n)], np.uint8)
        arrays[f'{split}_images'] = np.stack([_nodule_volume(bool(l), seed + i) for i, l in enumerate(labels)])
        arrays[f'{split}_labels'] = labels[:, None]
        seed += n
    np.savez_compressed(path, **arrays)
    return Path(path)


IXI_COLUMNS = ['IXI_ID', 'SEX_ID (1=m, 2=f)', 'HEIGHT', 'WEIGHT', 'ETHNIC_ID', 'DOB', 'STUDY_DATE', 'AGE']


def make_ixi_xls(path, ids) -> Path:
    "An `IXI.xls` demographics sheet for the subjects `ids`."
    import xlwt
    book = xlwt.Workbook(); sheet = book.add_sheet('Table')
    for j, c in enumerate(IXI_COLUMNS): sheet.write(0, j, c)
    for i, ixi_id in enumerate(ids, 1):
        for j, v in enumerate([ixi_id, 1 + i % 2, 170, 70, 1, '1960-01-01', '2005-06-01', 20 + 1.37 * i]): sheet.write(i, j, v)
    book.save(str(path))
    return Path(path)


def make_ixi_tiny_zip(path, ids, shape=(22, 14, 18), spacing=(1.5, 1.5, 1.2)) -> Path:
    "`ixi_tiny.zip` in TorchIO's layout (`ixi_tiny/{image,label}/IXI<id>-<site>-<n>_{image,label}.nii.gz`)."
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path, 'w') as z:
        for k, ixi_id in enumerate(ids):
            image, mask, affine = make_phantom(shape, spacing, ORIENTATIONS[k % 2], seed=100 + k, noise=0.3)
            stem = f'IXI{ixi_id:03d}-Guys-{800 + k:04d}'
            for kind, data, dtype in (('image', image * 300 + 500, np.float32), ('label', mask, np.uint8)):
                f = write_volume(Path(tmp)/f'{stem}_{kind}.nii.gz', data, affine, dtype=dtype)
                z.write(f, f'ixi_tiny/{kind}/{f.name}')
    return Path(path)


@pytest.fixture(scope='session')
def data_mirror(tmp_path_factory) -> Path:
    "A folder with `nodulemnist3d.npz`, `ixi_tiny.zip` and `IXI.xls` in the upstream formats, and their `MD5SUMS`."
    mirror = tmp_path_factory.mktemp('mirror')
    ids = list(range(2, 22))
    make_nodulemnist3d_npz(mirror/'nodulemnist3d.npz')
    make_ixi_tiny_zip(mirror/'ixi_tiny.zip', ids)
    make_ixi_xls(mirror/'IXI.xls', ids)
    write_mirror_checksums(mirror)   # a mirror of test releases lists its own md5 sums (the published ones differ)
    return mirror


@pytest.fixture
def offline_workdir(tmp_path, data_mirror, monkeypatch) -> Path:
    "Run in `<tmp>/work` (so the paper's '../data' is `<tmp>/data`) with the mirror set."
    work = tmp_path/'work'; work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv('FASTMONAI_DATA_MIRROR', str(data_mirror))
    return work


def pytest_pycollect_makeitem(collector, name, obj):
    "`from fastMONAI.vision_all import *` brings `test_eq`, `test_close`, fastai's `test_set`...: helpers, not tests."
    module = getattr(collector, 'obj', None)
    if callable(obj) and getattr(module, '__name__', None) and getattr(obj, '__module__', None) not in (None, module.__name__): return []
