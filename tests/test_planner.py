"""The automatic planner end to end: fingerprint → plan → train → save → predict, the rules it must keep, and bad input.

Tiny generated studies (fastMONAI.testing.make_planning_study), 8 base filters, whole volumes of a few thousand
voxels: seconds on two CPU cores.
"""
import contextlib, io, json
from pathlib import Path

import numpy as np
import nibabel as nib
import pytest
import torch

from fastMONAI.testing import make_planning_study, write_volume
from fastMONAI.vision_fingerprint import fingerprint_dataset, Fingerprint
from fastMONAI.vision_planner import ExperimentPlan, plan_experiment, train_experiment, make_splits, network_topology
from fastMONAI.vision_export import load_model
from fastMONAI import cli

FOV = (32., 32., 30.)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny networks on a shared machine: one torch thread is many times faster than two busy ones."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "Eight MR-like cases, 3-5 mm slices along S, four orientations, two labels."
    return make_planning_study(tmp_path_factory.mktemp('planner_mr'), n=8, fov=FOV, modality='mr', seed=11)


@pytest.fixture(scope='module')
def fingerprint(study):
    return fingerprint_dataset(study, n_workers=0, cache=False)


def test_spacing_rule(study, fingerprint):
    slices = [max(s) for s in study.spacing]
    plan = plan_experiment(fingerprint, base_filters=8)
    assert plan.plan.reorder                                    # four orientations
    assert plan.plan.target_spacing[2] == pytest.approx(np.percentile(slices, 10), abs=1e-3)
    assert plan.plan.target_spacing[2] >= max(plan.plan.target_spacing[:2])   # never finer than the other axes
    assert 'anisotropic' in plan.reasons['target_spacing']


def test_ct_and_mr_normalisation(tmp_path, fingerprint):
    ct = make_planning_study(tmp_path/'ct', n=6, fov=FOV, modality='ct', seed=3)
    ct_plan = plan_experiment(ct, n_workers=0, cache=False, base_filters=8)
    norm = ct_plan.plan.transforms[0]
    assert norm.name == 'CTNormalization' and 'CT' in ct_plan.reasons['normalisation']
    assert norm.kwargs['lower'] < 90 < norm.kwargs['upper'] and 60 < norm.kwargs['mean'] < 120   # the labelled tissue (HU)
    assert plan_experiment(fingerprint, base_filters=8).plan.transforms[0].name == 'ZNormalization'
    two = make_planning_study(tmp_path/'two', n=6, fov=FOV, modality=('ct', 'mr'), seed=4)
    mixed = plan_experiment(two, img_col=['img_path', 'img_path_1'], n_workers=0, cache=False, base_filters=8)
    names = [(t.name, t.kwargs.get('channels')) for t in mixed.plan.transforms[:2]]
    assert names == [('CTNormalization', (0,)), ('ZNormalization', (1,))]
    assert mixed.network['kwargs']['in_channels'] == 2


def test_patch_and_batch_bounds(fingerprint):
    plan = plan_experiment(fingerprint, base_filters=8, gpu_memory_gb=0.02)
    assert not plan.whole_volume
    divisor = np.prod(np.asarray(plan.network['kwargs']['strides']), 0)
    patch = np.asarray(plan.input_size())
    median = np.median([np.floor(np.asarray(c['canonical_shape']) * np.asarray(c['canonical_spacing']) / np.asarray(plan.plan.target_spacing))
                        for c in fingerprint.ok], 0)                # the median shape after resampling
    assert (patch % divisor == 0).all() and (patch <= median).all(), (patch, divisor, median)
    assert plan.batch_size >= 2
    big = plan_experiment(fingerprint, base_filters=8, patch_size=16, gpu_memory_gb=80)
    voxels = sum(np.prod(np.floor(np.asarray(c['canonical_shape']) * np.asarray(c['canonical_spacing']) / np.asarray(big.plan.target_spacing)))
                 for c in fingerprint.ok)
    assert big.batch_size == max(2, round(0.05 * voxels / np.prod(big.input_size())))      # at most 5% of the voxels


def test_topology_is_anisotropic_first():
    topology = network_topology([0.8, 0.8, 4.], [160, 160, 24])
    assert topology['kernel_size'][0] == [3, 3, 1] and topology['strides'][1] == [2, 2, 1]


def test_deterministic_splits(fingerprint, study):
    a, b = (plan_experiment(fingerprint, base_filters=8, seed=7) for _ in range(2))
    assert a.folds == b.folds and a.folds != plan_experiment(fingerprint, base_filters=8, seed=8).folds
    assert sorted(sum(map(list, a.folds), [])) == sorted(a.cases)
    grouped = make_splits(list('abcdef'), subjects=['s1', 's1', 's2', 's2', 's3', 's3'], n_folds=3, seed=0)
    assert sorted(map(sorted, grouped)) == [['a', 'b'], ['c', 'd'], ['e', 'f']]


def test_json_round_trip(tmp_path, fingerprint):
    plan = plan_experiment(fingerprint, base_filters=8)
    assert ExperimentPlan.load(plan.save(tmp_path/'plan.json')) == plan
    assert Fingerprint.load(fingerprint.save(tmp_path/'fp.json')).hash == fingerprint.hash
    d = json.loads((tmp_path/'plan.json').read_text())
    assert set(d['reasons']) >= {'target_spacing', 'normalisation', 'input', 'network', 'batch_size', 'loss', 'splits'}
    assert all(isinstance(v, str) and '\n' not in v for v in d['reasons'].values())


def test_bad_input_names_the_files(tmp_path, study):
    m = nib.load(study.mask_path[1])
    odd = write_volume(tmp_path/'odd_values.nii.gz', (np.asanyarray(m.dataobj) > 0) * 7, m.affine, dtype=np.uint8)
    with pytest.raises(ValueError, match='odd_values.nii.gz'):
        plan_experiment(study.assign(mask_path=[study.mask_path[0], str(odd)] + list(study.mask_path[2:])), n_workers=0, cache=False)
    with pytest.raises(ValueError, match='no label map'):
        plan_experiment(study.assign(mask_path=[None] * len(study)), n_workers=0, cache=False)
    with pytest.raises(ValueError, match='single case'):
        plan_experiment(study.iloc[:1], n_workers=0, cache=False)
    i = nib.load(study.img_path[2])
    two = write_volume(tmp_path/'two_channels.nii.gz', np.stack([np.asanyarray(i.dataobj)] * 2, -1), i.affine)
    with pytest.raises(ValueError, match='two_channels.nii.gz'):
        plan_experiment(study.assign(img_path=list(study.img_path[:2]) + [str(two)] + list(study.img_path[3:])), n_workers=0, cache=False)


def _dice(pred, truth, k): return 2 * ((pred == k) & (truth == k)).sum() / max((pred == k).sum() + (truth == k).sum(), 1)


def test_plan_train_predict_learns(tmp_path, study):
    "The command line path: `fastmonai plan` on a CSV, `fastmonai train plan.json --fold 0`, `fastmonai predict`."
    torch.manual_seed(0)
    study.to_csv(tmp_path/'cases.csv', index=False)
    def run(argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out): return cli.main(argv), out.getvalue()
    status, out = run(['plan', str(tmp_path/'cases.csv'), '-o', str(tmp_path/'plan.json'), '--folds', '4', '--workers', '0', '--quiet'])
    assert status == 0 and 'normalisation' in out and (tmp_path/'fingerprint.json').exists()
    plan = ExperimentPlan.load(tmp_path/'plan.json')
    # the one edit for a CPU test: a narrow network (planned widths are measured for GPUs), 30 epochs
    kwargs = dict(plan.network['kwargs'], filters=[8 * 2 ** i for i in range(len(plan.network['kwargs']['filters']))])
    plan.replace(network=dict(name='DynUNet', kwargs=kwargs), epochs=30, lr=2e-2).save(tmp_path/'plan.json')
    status, out = run(['train', str(tmp_path/'plan.json'), '--fold', '0', '--quiet', '--output', str(tmp_path/'model')])
    assert status == 0 and 'model saved to' in out
    assert cli.main(['predict', str(tmp_path/'model'), *[str(p) for p in study.img_path], '-o', str(tmp_path/'pred'), '--quiet']) == 0
    valid = set(plan.folds[0])
    scores = []
    for _, r in study.iterrows():
        if Path(r.img_path).name.split('.')[0] not in valid: continue
        pred = nib.load(tmp_path/'pred'/f"pred_{Path(r.img_path).name}").get_fdata()
        truth = nib.load(r.mask_path).get_fdata()
        assert pred.shape == truth.shape
        scores.append([_dice(pred, truth, k) for k in (1, 2)])
    assert np.mean(scores) > 0.6, scores                        # an organ-as-label-1 guess scores about 0.45
    config = json.loads((tmp_path/'model'/'config.json').read_text())
    assert config['metadata']['fingerprint_hash'] == plan.fingerprint['hash'] and config['plan']['labels'] == [0, 1, 2]
    assert load_model(tmp_path/'model').plan == plan.plan.replace(in_channels=1)
