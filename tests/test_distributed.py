"""Distributed training and inference with real processes: `torchrun` on 127.0.0.1, two CPU processes, gloo.

The launch commands are read from the README section "Training on several GPUs or machines" (README.md once it
holds the section, else docs_distributed.md) and run as written, with the placeholders (data, folders, HOST0, the
port) filled in; the training script is the README's `train.py` with its volume and network sizes shrunk.
Each launch costs two Python start-ups of the training stack: keep them few.
"""
import ast, json, os, re, shlex, shutil, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fastMONAI.testing import make_phantom_dataset, make_phantom, write_volume

ROOT = Path(__file__).resolve().parent.parent
SECTION = 'Training on several GPUs or machines'
TIMEOUT = 240


def readme_section() -> str:
    for name in ('README.md', 'docs_distributed.md'):
        text = (ROOT / name).read_text() if (ROOT / name).exists() else ''
        if f'## {SECTION}' in text:
            start = text.index(f'## {SECTION}')
            end = text.find('\n## ', start + 1)
            return text[start:end if end > 0 else None]
    raise AssertionError(f"no section '{SECTION}' in README.md or docs_distributed.md")


def readme_commands(section: str) -> list:
    "The shell commands of the section's bash blocks (comments dropped)."
    blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
    return [l.strip() for b in blocks for l in b.splitlines() if l.strip() and not l.strip().startswith('#')]


def readme_script(section: str) -> str:
    return re.findall(r'```python\n(.*?)```', section, re.S)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def environment(**extra) -> dict:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', **extra}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    return env


def argv(command: str, **subs) -> list:
    "A README command as arguments: `torchrun` is this Python's launcher, placeholders replaced."
    args = shlex.split(command)
    args = [subs.get(a, a) for a in args]
    assert args[0] == 'torchrun', command
    return [sys.executable, '-m', 'torch.distributed.run'] + args[1:]


def run(args, cwd, env) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, f"{' '.join(map(str, args))}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def epoch_rows(stdout: str) -> list:
    "fastai's per-epoch lines `[epoch, train_loss, valid_loss, metrics..., time]` (printed without a progress bar)."
    return [ast.literal_eval(l) for l in stdout.splitlines() if re.match(r"^\[\d+, ", l)]


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "Ten phantoms in two orientations (8 to train on, 2 to validate) and the README's script, shrunk."
    root = tmp_path_factory.mktemp('distributed')
    df = make_phantom_dataset(root / 'data', n=10, shape=(16, 16, 12), spacing=(1., 1., 1.5), orientations=('RAS', 'LPS'), seed=1)
    df['is_val'] = [i >= 8 for i in range(len(df))]
    df.to_csv(root / 'data.csv', index=False)
    script = readme_script(readme_section())
    shrunk = (script.replace('PadOrCrop(96)', 'PadOrCrop(16)').replace('channels=[16, 32, 64, 128], strides=[2, 2, 2],', 'channels=[8, 16], strides=[2],')
              .replace('fit_one_cycle(30, 1e-2)', 'fit_one_cycle(12, 3e-2)').replace('bs=2,', 'bs=1,'))
    assert shrunk.count('16') > script.count('16'), 'the README script changed: update the shrinking above'
    (root / 'train.py').write_text(shrunk)
    return root, df


@pytest.fixture(scope='module')
def trained(study):
    "The README's one-machine command on a cold cache, with every cache write logged."
    root, df = study
    command = next(c for c in readme_commands(readme_section()) if c.startswith('torchrun --standalone') and 'train.py' in c)
    log = root / 'cache_writes.log'
    env = environment(FASTMONAI_WRITE_LOG=str(log), PYTHONPATH=str(Path(__file__).parent / 'distributed_spy'))
    res = run(argv(command, **{'data.csv': str(root / 'data.csv'), 'cache/': str(root / 'cache'), 'model/': str(root / 'model')}), root, env)
    return root, df, res, log


def single_process_eval(root, df, folder):
    "The validation Dice and Hausdorff distance of the saved weights, computed by `get_preds` in this process."
    from fastMONAI.vision_all import (MedImageDataLoaders, MedMaskBlock, ZNormalization, PadOrCrop, RandomFlip, Learner,
                                      binary_dice_score, binary_hausdorff_distance, load_model, noop, AccumulatedDice)
    dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='mask_path', y_block=MedMaskBlock, valid_col='is_val',
                                      item_tfms=[ZNormalization(), PadOrCrop(16), RandomFlip(p=0.5)], reorder=True, resample=1.5,
                                      bs=1, cache=False, num_workers=0)
    learn = Learner(dls, load_model(folder).model, loss_func=lambda p, t: p.mean())
    with learn.no_bar(): preds, targs = learn.get_preds(act=noop)
    tp, fp, fn = AccumulatedDice(n_classes=2).batch_counts(preds, targs)[0].tolist()
    return float(binary_dice_score(preds, targs)), float(binary_hausdorff_distance(preds, targs)), 2 * tp / (2 * tp + fp + fn)


def test_two_processes_train_like_one(trained):
    root, df, res, log = trained
    rows = epoch_rows(res.stdout)
    assert len(rows) == 12, res.stdout                                  # the epoch table, printed by rank 0 only
    first, last = rows[0][3], rows[-1][3]
    assert last > first + 0.3, rows                                    # it learnt
    assert sorted(p.name for p in (root / 'model').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    dice, hausdorff, accumulated = single_process_eval(root, df, root / 'model')
    assert dice == pytest.approx(last, abs=1e-5)                       # the whole validation set, each item once
    assert hausdorff == pytest.approx(rows[-1][4], abs=1e-4)           # millimetres, from each item's geometry
    assert accumulated == pytest.approx(rows[-1][5], abs=1e-5)         # TP/FP/FN of both processes' items, summed


def test_cold_cache_written_once(trained):
    root, df, res, log = trained
    writes = log.read_text().split()[1::2]                              # "pid key" per write
    entries = list((root / 'cache').glob('??/*.json'))
    assert len(entries) == 2 * len(df)                                  # every image and mask, training and validation
    assert sorted(writes) == sorted(p.stem for p in entries), 'an entry was written more than once'


def test_predict_split_between_processes(trained, tmp_path):
    root, df, _, _ = trained
    scans = tmp_path / 'scans'
    for i in range(5):
        img, _, aff = make_phantom((16, 14, 12), spacing=(1.2, 1., 1.5), orientation=('RAS', 'LPS', 'PIR')[i % 3], seed=40 + i)
        write_volume(scans / f'scan_{i}.nii.gz', img, aff)
    command = next(c for c in readme_commands(readme_section()) if 'fastmonai predict' in c)
    exe = shutil.which('fastmonai', path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    assert exe, 'the fastmonai command is not installed (pip install -e .)'
    out = tmp_path / 'predictions'
    run(argv(command, **{'model/': str(root / 'model'), 'scans/': str(scans), 'predictions/': str(out), 'fastmonai': exe}), tmp_path, environment())
    single = tmp_path / 'single'
    from fastMONAI.cli import main
    assert main(['predict', str(root / 'model'), str(scans), '-o', str(single), '--quiet']) == 0   # one process: this one
    names = sorted(p.name for p in single.iterdir())
    assert names == [f'pred_scan_{i}.nii.gz' for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == names               # each written once, no temporary files left
    import nibabel as nib
    for name in names:
        a, b = nib.load(out / name), nib.load(single / name)
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)) and np.allclose(a.affine, b.affine)


def check_run(out: Path):
    "Both processes: the same recorded values and weights; distinct shards of every epoch that cover the training set."
    runs = [json.loads((out / f'seen_{r}.json').read_text()) for r in (0, 1)]
    assert runs[0]['values'] == runs[1]['values']
    w0, w1 = [torch.load(out / f'weights_{r}.pt') for r in (0, 1)]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    orders = []
    for epoch in range(3):
        shards = [[p for row in run['seen'] if row[0] == epoch for p in row[1:]] for run in runs]
        assert len(shards[0]) == len(shards[1]) == 4 and not set(shards[0]) & set(shards[1]), shards
        assert len(set(shards[0]) | set(shards[1])) == 8
        orders.append(shards[0])
    assert len({tuple(o) for o in orders}) > 1                          # reshuffled between epochs


def test_two_machines_over_loopback(study, tmp_path):
    """The README's several-machine commands as two 'machines' of one process each on 127.0.0.1, sharing a cache folder;
    the script's model has an auxiliary head that the loss uses only every other step. It trains on whole volumes, then
    on patches (each process sampling its own subjects)."""
    root, _ = study
    node_commands = [c for c in readme_commands(readme_section()) if '--node-rank' in c]
    assert len(node_commands) == 2
    port, out = str(free_port()), tmp_path / 'out'
    subs = {'HOST0': '127.0.0.1', '29500': port, 'train.py': str(Path(__file__).parent / 'distributed_check.py'),
            'data.csv': str(root / 'data.csv'), '/shared/cache': str(tmp_path / 'cache'), 'model/': str(out)}
    env = environment(FASTMONAI_CACHE_DIR=str(tmp_path / 'cache'))
    procs = [subprocess.Popen(argv(c, **subs), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in node_commands]
    for p in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
    check_run(out / 'volumes'); check_run(out / 'patches')


def test_cli_train_with_two_processes(study, tmp_path):
    "`fastmonai train CONFIG --nproc 2`: the CLI launches torchrun itself; one epoch table, one model, and it learnt."
    root, df = study
    config = dict(task='segmentation', data=str(root / 'data.csv'), image_col='img_path', label_col='mask_path', valid_col='is_val',
                  reorder=True, resample=1.5, item_tfms=[dict(name='ZNormalization'), dict(name='PadOrCrop', size=16)],
                  arch='UNet', arch_kwargs=dict(spatial_dims=3, in_channels=1, out_channels=1, channels=[8, 16], strides=[2],
                                                num_res_units=1),
                  epochs=10, lr=3e-2, bs=1, output=str(tmp_path / 'model'), seed=0)
    (tmp_path / 'config.json').write_text(json.dumps(config))
    env = environment(FASTMONAI_CACHE_DIR=str(tmp_path / 'cache'))
    res = run([sys.executable, '-m', 'fastMONAI.cli', 'train', str(tmp_path / 'config.json'), '--nproc', '2', '--quiet'], tmp_path, env)
    rows = [l.split() for l in res.stdout.splitlines() if re.match(r'^\s+\d+\s+[\d.]+\s', l)]   # the CLI's epoch table
    rows = [[int(r[0])] + [float(x) for x in r[1:4]] for r in rows]
    assert len(rows) == 10, res.stdout                                  # printed by rank 0 only
    assert rows[-1][3] > rows[0][3] + 0.3, rows                        # Dice went up
    assert res.stdout.count('model saved to') == 1, res.stdout
    assert sorted(p.name for p in (tmp_path / 'model').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert len(list((tmp_path / 'cache').glob('??/*.json'))) == 2 * len(df)   # the processes shared one disk cache
