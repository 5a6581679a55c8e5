"""Benchmark of the segmentation data pipeline: volumes/s per epoch and peak resident memory, cache off vs on,
item vs batch augmentation, and the paper's code unchanged (its item augmentation moved onto batches by itself).

A benchmark, not a test: run it on a quiet machine (`uptime` load well under the number of cores).

    python bench/bench_pipeline.py                    # 40 training subjects, num_workers 0, 3 runs per row
    python bench/bench_pipeline.py --workers 0 2      # also with two DataLoader workers
    python bench/bench_pipeline.py --quick            # 16 subjects, one run per row, to try it out

The data is generated (fastMONAI.testing.make_phantom) in a temporary folder: IXI-Tiny-like
image + mask pairs of 64 x 64 x 48 voxels of 1.5 x 1.5 x 4 mm (int16 image, uint8 mask, .nii.gz; about
the voxel count of an IXI Tiny volume, 83 x 44 x 55), in three storage orientations, which the pipeline
reorders and resamples to 2 mm isotropic (48 x 48 x 96). The per-step timings are printed first, to compare
with the issue's measurements of the real IXI Tiny files.
The pipeline is the paper's: reorder + resample, ZNormalization, PadOrCrop([48, 48, 96]),
RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5), bs=8, over the training split.

Every run is a fresh Python process (`--one`), so that its peak resident memory (`ru_maxrss`) is its own (the
processes that fill the cache are forked from it and share its pages; they are not counted).
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time, tempfile, platform, warnings
from pathlib import Path
import numpy as np
import torch

warnings.filterwarnings('ignore')
SHAPE, SPACING, TARGET, SIZE, BS = (64, 64, 48), (1.5, 1.5, 4.), 2., [48, 48, 96], 8

# name: (cached, augmentation, fill, memory layer)
#   augmentation: 'item' (item transforms, batch_augment=False), 'batch' (written as batch_tfms), 'paper' (the paper's item
#   transforms, unchanged: moved onto batches by MedDataBlock); fill: 'lazy' (during epoch 1), 'first' (before epoch 1, counted
#   in it), 'fit' (what `Learner.fit` does by default: in the background with num_workers=0)
VARIANTS = {
    'uncached, item aug (baseline)': (False, 'item', None, True),
    'cached lazy, item aug': (True, 'item', 'lazy', True),
    'cached, filled first, item aug': (True, 'item', 'first', True),
    'cached lazy, batch aug': (True, 'batch', 'lazy', True),
    'cached, filled first, batch aug': (True, 'batch', 'first', True),
    'paper code unchanged (auto batch augmentation)': (True, 'paper', 'fit', True),
    'paper code unchanged, memory layer off': (True, 'paper', 'fit', False),
    'MONAI CacheDataset, same transforms': ('monai', 'item', 'first', True),
}
MONAI = 'MONAI CacheDataset, same transforms'
PAPER = 'paper code unchanged (auto batch augmentation)'

class NearFree(torch.nn.Module):
    """A near-free model: each input's mean times one weight (a 1×1×1 convolution already costs ~150 ms per training batch
    of 8 × 48×48×96 voxels on two CPU cores — more than the data pipeline being measured)."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
    def forward(self, x): return torch.as_tensor(x).float().mean((1, 2, 3, 4)) * self.w

def near_free_loss(pred, targ):
    "The squared difference between the prediction and the target mask's mean (what `NearFree` can fit)."
    return ((torch.as_tensor(pred) - torch.as_tensor(targ).float().mean((1, 2, 3, 4))) ** 2).mean()

def make_data(folder: Path, n: int):
    import pandas as pd
    from fastMONAI.testing import make_phantom, write_volume
    rows = []
    for i in range(n):
        img, msk, aff = make_phantom(SHAPE, SPACING, orientation=('RAS', 'LPS', 'LAS')[i % 3], seed=i, noise=0.3)
        ip = write_volume(folder / f'img_{i:03d}.nii.gz', np.rint(img * 1000), aff, dtype=np.int16)
        mp = write_volume(folder / f'msk_{i:03d}.nii.gz', msk, aff, dtype=np.uint8)
        rows.append(dict(img_path=str(ip), mask_path=str(mp)))
    return pd.DataFrame(rows)

def step_timings(path):
    "Per-image cost of each step (ms), to compare with the issue's IXI Tiny numbers."
    from fastMONAI.vision_core import med_img_reader
    from fastMONAI.vision_augmentation import ZNormalization, PadOrCrop, RandomAffine
    from fastMONAI.vision_batch_augmentation import BatchRandomAffine
    import fastMONAI.vision_io as vio
    def ms(f, k=15):
        "Median milliseconds of `k` calls, and the result."
        f(); times = []
        for _ in range(k):
            t = time.perf_counter(); r = f(); times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1000, r
    t_read, x = ms(lambda: med_img_reader(path))
    fast, vio._igzip = vio._igzip, None
    t_read_zlib, _ = ms(lambda: med_img_reader(path))
    vio._igzip = fast
    t_pre, y = ms(lambda: med_img_reader(path, reorder=True, resample=TARGET))
    t_norm, z = ms(lambda: ZNormalization()(y))
    t_pad, w = ms(lambda: PadOrCrop(SIZE)(z))
    t_aff, _ = ms(lambda: RandomAffine(scales=0.1, degrees=5, p=1.)(w, split_idx=0))
    batch = torch.stack([w] * BS)
    t_baff, _ = ms(lambda: BatchRandomAffine(scales=0.1, degrees=5, p=1.)(batch, split_idx=0))
    np.save(Path(path).with_suffix('.npy'), w.numpy())
    t_npy, _ = ms(lambda: np.load(Path(path).with_suffix('.npy')))
    res = dict(read=t_read, read_without_isal=t_read_zlib if fast is not None else float('nan'), reorder_resample=t_pre - t_read,
               znorm=t_norm, pad_crop=t_pad, random_affine_item=t_aff, random_affine_batch_per_item=t_baff / BS, npy_load=t_npy)
    return res

def dataloaders(df, cache, augmentation, # 'item', 'batch' or 'paper' (False: 'item', True: 'batch')
                workers: int):
    augmentation = {False: 'item', True: 'batch'}.get(augmentation, augmentation)
    from fastai.data.all import ColReader, IndexSplitter
    from fastai.vision.data import ImageBlock
    from fastMONAI.vision_core import MedImage
    from fastMONAI.vision_data import MedDataBlock, MedMaskBlock
    from fastMONAI.vision_augmentation import ZNormalization, PadOrCrop, RandomAffine, RandomFlip
    from fastMONAI.vision_batch_augmentation import BatchRandomAffine, BatchRandomFlip
    item_aug = [] if augmentation == 'batch' else [RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5)]
    batch_tfms = [BatchRandomAffine(scales=0.1, degrees=5, p=0.5), BatchRandomFlip(p=0.5)] if augmentation == 'batch' else None
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img_path'), get_y=ColReader('mask_path'),
                          splitter=IndexSplitter(list(range(len(df) - BS, len(df)))),
                          item_tfms=[ZNormalization(), PadOrCrop(SIZE)] + item_aug, batch_tfms=batch_tfms,
                          reorder=True, resample=TARGET, cache=cache, batch_augment=augmentation == 'paper')
    return dblock.dataloaders(df, bs=BS, num_workers=workers)

def epoch(dls) -> float:
    "Seconds for one epoch's data as `Learner.fit` loads it, without a model: the training set, then the validation set."
    start = time.perf_counter()
    for dl in (dls.train, dls.valid):
        for x, y in dl: pass
    return time.perf_counter() - start

def run_monai(args) -> dict:
    """The same pipeline written with MONAI: `CacheDataset` (filled by 2 threads before epoch 1, counted in it) over
    LoadImaged, EnsureChannelFirstd, Orientationd('RAS'), Spacingd(2 mm; bilinear/nearest), NormalizeIntensityd,
    ResizeWithPadOrCropd; then RandAffined(prob 0.5, 5 degrees, scale 0.1) and RandFlipd(prob 0.5) per item, in the
    DataLoader; the same near-free model, Adam step and loss as the fastMONAI rows, in a plain PyTorch loop."""
    import pandas as pd
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (Compose, LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, NormalizeIntensityd,
                                  ResizeWithPadOrCropd, RandAffined, RandFlipd)
    if args.threads: torch.set_num_threads(args.threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    df = pd.read_csv(args.data)
    items = [dict(image=r.img_path, label=r.mask_path) for r in df.itertuples()]
    train, valid = items[:-BS], items[-BS:]
    keys = ['image', 'label']
    det = [LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes='RAS'),
           Spacingd(keys, pixdim=(TARGET,) * 3, mode=('bilinear', 'nearest')), NormalizeIntensityd('image'),
           ResizeWithPadOrCropd(keys, spatial_size=SIZE)]
    rand = [RandAffined(keys, prob=0.5, rotate_range=[np.deg2rad(5)] * 3, scale_range=[0.1] * 3, mode=('bilinear', 'nearest')),
            RandFlipd(keys, prob=0.5, spatial_axis=0)]
    model = NearFree(); opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = time.perf_counter()
    tds = CacheDataset(train, Compose(det + rand), cache_rate=1.0, num_workers=2, progress=False)
    vds = CacheDataset(valid, Compose(det), cache_rate=1.0, num_workers=2, progress=False)
    tdl = DataLoader(tds, batch_size=BS, shuffle=True, num_workers=args.workers, drop_last=True)
    vdl = DataLoader(vds, batch_size=BS, num_workers=args.workers)
    times = []
    for _ in range(2):
        model.train()
        for b in tdl:
            loss = near_free_loss(model(b['image'].as_tensor()), b['label'].as_tensor())
            opt.zero_grad(); loss.backward(); opt.step()
        model.eval()
        with torch.no_grad():
            for b in vdl: near_free_loss(model(b['image'].as_tensor()), b['label'].as_tensor())
        times.append(time.perf_counter())
    return dict(e1=times[0] - start, e2=times[1] - times[0], rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                rss_start_mib=rss_start / 1024, batch_augmentation=[])

def run_one(args) -> dict:
    "One configuration in this (fresh) process: epoch 1 and 2 as `Learner.fit` runs them, and peak memory."
    import pandas as pd
    from fastai.callback.core import Callback
    import fastai.callback.progress, fastai.callback.schedule   # (`learn.no_bar`, `no_logging`)
    from fastMONAI.vision_cache import VolumeCache
    from fastMONAI.vision_learner import Learner
    if args.threads: torch.set_num_threads(args.threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cached, augmentation, fill, memory = VARIANTS[args.one]
    if cached == 'monai': return run_monai(args)
    df = pd.read_csv(args.data)
    cache = VolumeCache(args.cache, **({} if memory else dict(memory_bytes=0))) if cached else False
    dls = dataloaders(df, cache, augmentation, args.workers)
    times = {}
    class Clock(Callback):
        order = -100                                    # before FillCache: a fill before the first epoch counts in it
        def before_fit(self): times['start'] = time.perf_counter()
        def after_epoch(self): times[self.epoch] = time.perf_counter()
    model = NearFree()                                 # a near-free model: the data pipeline is what is timed
    learn = Learner(dls, model, loss_func=near_free_loss, cbs=Clock())
    if fill == 'lazy': learn.fill_cache.n_workers = 0
    if fill == 'first': learn.fill_cache.background, learn.fill_cache.n_workers = False, 2
    if fill == 'fit': learn.fill_cache.n_workers = 2
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    e1, e2 = times[0] - times['start'], times[1] - times[0]
    if cached: cache.flush()
    return dict(e1=e1, e2=e2, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_start_mib=rss_start / 1024,
                batch_augmentation=[repr(tw.item) for tw in dls.batch_augmentation])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=40, help='training subjects (8 more are generated for validation)')
    ap.add_argument('--workers', type=int, nargs='+', default=[0], help='DataLoader num_workers values to run')
    ap.add_argument('--quick', action='store_true', help='16 subjects, one run per row')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'RESULTS.md'), help='where to write the Markdown table ("" for nowhere)')
    ap.add_argument('--repeat', type=int, default=3, help='runs per variant (the median is printed)')
    ap.add_argument('--verbose', action='store_true', help='print the seconds of every run')
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s choice)')
    ap.add_argument('--one', help=argparse.SUPPRESS); ap.add_argument('--data', help=argparse.SUPPRESS)
    ap.add_argument('--cache', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.workers = args.workers[0]
        print(json.dumps(run_one(args))); return
    if args.threads: torch.set_num_threads(args.threads)
    n, repeat = (16, 1) if args.quick else (args.n, args.repeat)
    torch.manual_seed(0)
    lines = []
    def say(s=''): print(s, flush=True); lines.append(s)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        df = make_data(tmp / 'data', n + BS)
        df.to_csv(tmp / 'data.csv', index=False)
        say('# Data pipeline benchmark\n')
        say(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), load average at start {os.getloadavg()[0]:.2f}; {n} training subjects, '
            f'{SHAPE} voxels of {SPACING} mm → {SIZE} at {TARGET} mm, bs={BS}.\n')
        t = step_timings(df.img_path[0])
        say('Per-image step timings (ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in t.items()) + '\n')
        say('Epochs are timed as `Learner.fit` runs them, with a near-free model (each input\'s mean times one weight; a 1×1×1 convolution would cost more than the pipeline): a pass over the '
            'training set then one over the validation set; volumes/s counts both. `lazy`: the cache fills during epoch 1 in '
            'the training process; `filled first`: `FillCache(background=False)` fills it with 2 processes before epoch 1, '
            'counted in epoch 1; the paper-code rows do what `Learner.fit` does by default (with `num_workers=0`, the default '
            'on two cores with the cache on): 2 processes fill the cache in the background in the order the first epoch asks '
            'for the items, while it trains. The MONAI row is the same pipeline written with MONAI\'s `CacheDataset` (filled by 2 threads before epoch 1, counted in it; `RandAffined`/`RandFlipd` per item; a plain PyTorch loop with the same model). "item aug" rows keep `RandomAffine`/`RandomFlip` as item transforms '
            '(`batch_augment=False`), "batch aug" rows write `BatchRandomAffine`/`BatchRandomFlip` as batch transforms, and '
            'the paper-code rows give the paper\'s item transforms unchanged, which `MedDataBlock` moves onto batches. '
            f'Each figure is the median of {repeat} run(s), each in a fresh process and cache folder. Peak RSS: the training '
            'process\'s resident memory at its peak (after importing torch, fastai and MONAI it is already at the "start" '
            'figure); the memory layer of the cache holds at most 512 MiB of entries (here all of them), the rows with it off '
            'read every entry from the disk store (the page cache).\n')
        say('| num_workers | pipeline | epoch 1 (vol/s) | epoch 2 (vol/s) | epoch 1 / uncached | epoch 2 / uncached | '
            'peak RSS, MiB (start) |')
        say('|---|---|---|---|---|---|---|')
        nvol = n + BS   # volumes per epoch: training + validation
        paper_ratios = []
        for w in args.workers:
            rows = {}
            for r in range(repeat):       # alternate the variants so that load changes hit all of them alike
                for k, name in enumerate(VARIANTS):
                    cmd = [sys.executable, __file__, '--one', name, '--data', str(tmp / 'data.csv'), '--cache', str(tmp / f'cache_{w}_{r}_{k}'),
                           '--workers', str(w)] + (['--threads', str(args.threads)] if args.threads else [])
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode: raise RuntimeError(f'{name}: {out.stderr[-2000:]}')
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    if args.verbose: print(f'  run {r}, {name}: epoch 1 {res["e1"]:.2f} s, epoch 2 {res["e2"]:.2f} s, '
                                           f'peak RSS {res["rss_mib"]:.0f} MiB, moved {res["batch_augmentation"]}', flush=True)
                    rows.setdefault(name, []).append(res)
            med = {k: {f: float(np.median([v[f] for v in vs])) for f in ('e1', 'e2', 'rss_mib', 'rss_start_mib')}
                   for k, vs in rows.items()}
            b1, b2 = nvol / med['uncached, item aug (baseline)']['e1'], nvol / med['uncached, item aug (baseline)']['e2']
            for name, m in med.items():
                e1, e2 = nvol / m['e1'], nvol / m['e2']
                say(f'| {w} | {name} | {e1:.1f} | {e2:.1f} | {e1 / b1:.2f}x | {e2 / b2:.1f}x | {m["rss_mib"]:.0f} ({m["rss_start_mib"]:.0f}) |')
            p, item = med[PAPER], med['cached, filled first, item aug']
            mo = med[MONAI]
            paper_ratios.append(f'num_workers={w}: the paper\'s code unchanged runs epoch 2 at {mo["e2"] / p["e2"]:.1f}x and epoch 1 at '
                                f'{mo["e1"] / p["e1"]:.2f}x the MONAI CacheDataset pipeline with the same transforms.')
            paper_ratios.append(f'num_workers={w}: the paper\'s code unchanged runs epoch 2 at {item["e2"] / p["e2"]:.1f}x and epoch 1 at '
                                f'{item["e1"] / p["e1"]:.2f}x the cached pipeline with item augmentation filled first (what it ran as before), '
                                f'and at {med["uncached, item aug (baseline)"]["e2"] / p["e2"]:.1f}x / '
                                f'{med["uncached, item aug (baseline)"]["e1"] / p["e1"]:.2f}x the uncached baseline (epoch 2 / epoch 1).')
        say('')
        for s in paper_ratios: say(s)
        say(f'\nLoad average at the end: {os.getloadavg()[0]:.2f}.')
    if args.out: Path(args.out).write_text('\n'.join(lines) + '\n')

if __name__ == '__main__': main()
