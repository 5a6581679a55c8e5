"""Benchmark of the segmentation data pipeline: volumes/s per epoch, cache off vs on, item vs batch augmentation.

A benchmark, not a test: run it on a quiet machine (`uptime` load well under the number of cores).

    python bench/bench_pipeline.py                    # 40 training subjects, num_workers 0
    python bench/bench_pipeline.py --workers 0 2      # also with two DataLoader workers
    python bench/bench_pipeline.py --quick            # 16 subjects, to try it out

The data is generated (fastMONAI.testing.make_phantom) in a temporary folder: IXI-Tiny-like
image + mask pairs of 64 x 64 x 48 voxels of 1.5 x 1.5 x 4 mm (int16 image, uint8 mask, .nii.gz; about
the voxel count of an IXI Tiny volume, 83 x 44 x 55), in three storage orientations, which the pipeline
reorders and resamples to 2 mm isotropic (48 x 48 x 96). The per-step timings are printed first, to compare
with the issue's measurements of the real IXI Tiny files.
The pipeline is the paper's: reorder + resample, ZNormalization, PadOrCrop([48, 48, 96]),
RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5), bs=8, over the training split.
"""
from __future__ import annotations
import argparse, os, sys, time, tempfile, platform, warnings
from pathlib import Path
import numpy as np
import torch

warnings.filterwarnings('ignore')
from fastai.data.all import ColReader, IndexSplitter
from fastai.vision.data import ImageBlock
from fastMONAI.testing import make_phantom, write_volume
from fastMONAI.vision_core import MedImage, MedMask, med_img_reader
from fastMONAI.vision_data import MedDataBlock, MedMaskBlock
from fastMONAI.vision_augmentation import ZNormalization, PadOrCrop, RandomAffine, RandomFlip
from fastMONAI.vision_cache import VolumeCache, fill_cache
from fastMONAI.vision_batch_augmentation import BatchRandomAffine, BatchRandomFlip

SHAPE, SPACING, TARGET, SIZE, BS = (64, 64, 48), (1.5, 1.5, 4.), 2., [48, 48, 96], 8

def make_data(folder: Path, n: int):
    import pandas as pd
    rows = []
    for i in range(n):
        img, msk, aff = make_phantom(SHAPE, SPACING, orientation=('RAS', 'LPS', 'LAS')[i % 3], seed=i, noise=0.3)
        ip = write_volume(folder / f'img_{i:03d}.nii.gz', np.rint(img * 1000), aff, dtype=np.int16)
        mp = write_volume(folder / f'msk_{i:03d}.nii.gz', msk, aff, dtype=np.uint8)
        rows.append(dict(img_path=str(ip), mask_path=str(mp)))
    return pd.DataFrame(rows)

def step_timings(path):
    "Per-image cost of each step (ms), to compare with the issue's IXI Tiny numbers."
    import torchio as tio
    from fastMONAI.vision_core import to_tio
    def ms(f, k=15):
        "Median milliseconds of `k` calls, and the result."
        f(); times = []
        for _ in range(k):
            t = time.perf_counter(); r = f(); times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1000, r
    t_read, x = ms(lambda: med_img_reader(path))
    t_pre, y = ms(lambda: med_img_reader(path, reorder=True, resample=TARGET))
    t_norm, z = ms(lambda: ZNormalization()(y))
    t_pad, w = ms(lambda: PadOrCrop(SIZE)(z))
    t_aff, _ = ms(lambda: RandomAffine(scales=0.1, degrees=5, p=1.)(w, split_idx=0))
    np.save(Path(path).with_suffix('.npy'), w.numpy())
    t_npy, _ = ms(lambda: np.load(Path(path).with_suffix('.npy')))
    return dict(read=t_read, reorder_resample=t_pre - t_read, znorm=t_norm, pad_crop=t_pad, random_affine=t_aff, npy_load=t_npy)

def dataloaders(df, cache, batch_aug: bool, workers: int):
    item_aug = [] if batch_aug else [RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5)]
    batch_tfms = [BatchRandomAffine(scales=0.1, degrees=5, p=0.5), BatchRandomFlip(p=0.5)] if batch_aug else None
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img_path'), get_y=ColReader('mask_path'),
                          splitter=IndexSplitter(list(range(len(df) - BS, len(df)))),
                          item_tfms=[ZNormalization(), PadOrCrop(SIZE)] + item_aug, batch_tfms=batch_tfms,
                          reorder=True, resample=TARGET, cache=cache)
    return dblock.dataloaders(df, bs=BS, num_workers=workers)

def epoch(dls) -> float:
    "Seconds for one epoch as `Learner.fit` loads it: a pass over the training set, then over the validation set."
    start = time.perf_counter()
    for dl in (dls.train, dls.valid):
        for x, y in dl: pass
    return time.perf_counter() - start

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=40, help='training subjects (8 more are generated for validation)')
    ap.add_argument('--workers', type=int, nargs='+', default=[0], help='DataLoader num_workers values to run')
    ap.add_argument('--quick', action='store_true', help='16 subjects')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'RESULTS.md'), help='where to write the Markdown table ("" for nowhere)')
    ap.add_argument('--repeat', type=int, default=3, help='runs per variant (the median is printed)')
    ap.add_argument('--verbose', action='store_true', help='print the seconds of every run')
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s choice)')
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    n = 16 if args.quick else args.n
    torch.manual_seed(0)
    lines = []
    def say(s=''): print(s, flush=True); lines.append(s)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        df = make_data(tmp / 'data', n + BS)
        load = os.getloadavg()[0]
        say(f'# Data pipeline benchmark\n')
        say(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), load average at start {load:.2f}; {n} training subjects, '
            f'{SHAPE} voxels of {SPACING} mm → {SIZE} at {TARGET} mm, bs={BS}.\n')
        t = step_timings(df.img_path[0])
        say('Per-image step timings (ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in t.items()) + '\n')
        say('Epoch 1 of the cached rows is timed as `Learner.fit` runs it: with `fill` the `FillCache` callback (on by '
            'default) first fills the cache with 2 processes and that time is counted in epoch 1; `lazy` fills it during '
            f'epoch 1 instead. An epoch is a pass over the training set then one over the validation set (no model), '
            f'and volumes/s counts both. Each figure is the median of {args.repeat} runs, each in a fresh cache folder. '
            'What `MedDataBlock.dataloaders` does by default on two cores with the cache on: the `fill` rows with '
            '`num_workers=0`.\n')
        say('| num_workers | pipeline | epoch 1 (vol/s) | epoch 2 (vol/s) | epoch 1 / uncached | epoch 2 / uncached |')
        say('|---|---|---|---|---|---|')
        nvol = n + BS   # volumes per epoch: training + validation
        for w in args.workers:
            rows = {}
            variants = (('uncached, item aug (baseline)', False, False, None), ('cached lazy, item aug', True, False, False),
                        ('cached fill, item aug', True, False, True), ('cached lazy, batch aug', True, True, False),
                        ('cached fill, batch aug', True, True, True))
            for r in range(args.repeat):       # alternate the variants so that load changes hit all of them alike
                for name, cached, batch_aug, fill in variants:
                    cache = VolumeCache(tmp / f'cache_{w}_{r}_{len(name)}_{batch_aug}_{fill}') if cached else False
                    dls = dataloaders(df, cache, batch_aug, w)
                    t_fill = fill_cache(dls, n_workers=2)['seconds'] if fill else 0.
                    e1, e2 = t_fill + epoch(dls), epoch(dls)
                    if args.verbose: print(f'  run {r}, {name}: fill {t_fill:.2f} s, epoch 1 {e1:.2f} s, epoch 2 {e2:.2f} s', flush=True)
                    rows.setdefault(name, []).append((nvol / e1, nvol / e2))
            med = {k: np.median(np.array(v), axis=0) for k, v in rows.items()}
            b1, b2 = med[variants[0][0]]
            for name, (e1, e2) in med.items():
                say(f'| {w} | {name} | {e1:.1f} | {e2:.1f} | {e1 / b1:.2f}x | {e2 / b2:.1f}x |')
        say(f'\nLoad average at the end: {os.getloadavg()[0]:.2f}.')
    if args.out: Path(args.out).write_text('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
