"""Cost of verifying cache entries: the CRC-32 that every read from the disk store checks (`vision_cache`).

A benchmark, not a test: run it on a quiet machine.

    python bench/bench_cache_checksum.py                 # 40 + 8 subjects, median of 5 runs
    python bench/bench_cache_checksum.py --quick         # 16 subjects, 3 runs

The data and pipeline are `bench_pipeline.py`'s (the paper's segmentation pipeline on IXI-Tiny-sized pairs;
entries are a [1, 48, 48, 96] float32 image, 0.84 MiB, and a uint8 mask, 0.21 MiB). Measured, each with the
check on and off (`_checksum` replaced by the stored value, i.e. the code before entries were verified):

- per entry: reading one entry from the disk store (`VolumeCache._disk_get`: JSON, `.npy` from the page cache,
  checksum), and the CRC-32 alone;
- per cached epoch (a training pass then a validation pass, no model, `num_workers=0`): with a disk-only cache
  (`memory_bytes=0`: every item is read from disk, as DataLoader worker processes read it — the case that pays
  the check) and with the default in-memory layer in front (the default with `num_workers=0`: items come from
  memory, where nothing is re-checked).
"""
from __future__ import annotations
import argparse, os, platform, sys, tempfile, time, warnings, zlib
from pathlib import Path
from unittest import mock
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings('ignore')
from bench_pipeline import make_data, dataloaders, epoch, BS, SIZE
import fastMONAI.vision_cache as vc
from fastMONAI.vision_cache import VolumeCache, fill_cache


checked = vc._checksum
def unchecked(arr, meta): return meta.get('checksum')      # what the cache did before entries were verified


def per_entry(cache: VolumeCache, k: int = 20) -> dict:
    "Median ms to read an entry from disk with and without the check, and of the CRC-32 alone, per kind of entry."
    res = {}
    for js in sorted(cache.folder.glob('??/*.json')):
        key = js.stem
        arr, meta = cache._disk_get(key)
        kind = meta['cls']
        if kind in res: continue
        times = {}
        for name, patch in (('checked', None), ('unchecked', unchecked)) * 2:
            with mock.patch.object(vc, '_checksum', patch or checked):
                for _ in range(k):
                    t = time.perf_counter(); cache._disk_get(key); times.setdefault(name, []).append(time.perf_counter() - t)
        crc = []
        for _ in range(k):
            t = time.perf_counter(); zlib.crc32(memoryview(arr).cast('B')); crc.append(time.perf_counter() - t)
        res[kind] = dict(mib=arr.nbytes / 2**20, checked=np.median(times['checked']) * 1e3,
                         unchecked=np.median(times['unchecked']) * 1e3, crc=np.median(crc) * 1e3)
        if len(res) == 2: break
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=40, help='training subjects (8 more are generated for validation)')
    ap.add_argument('--repeat', type=int, default=5, help='epochs timed per variant (the median is reported)')
    ap.add_argument('--quick', action='store_true', help='16 subjects, 3 runs')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'RESULTS_cache_checksum.md'), help='Markdown output ("" for none)')
    args = ap.parse_args()
    n, repeat = (16, 3) if args.quick else (args.n, args.repeat)
    torch.manual_seed(0)
    lines = []
    def say(s=''): print(s, flush=True); lines.append(s)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        df = make_data(tmp / 'data', n + BS)
        say('# Cost of verifying cache entries (CRC-32 on every read from disk)\n')
        say(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), load average at start {os.getloadavg()[0]:.2f}; {n} + {BS} subjects, '
            f'entries {SIZE} voxels, bs={BS}, num_workers=0, median of {repeat} runs.\n')
        disk = VolumeCache(tmp / 'disk_only', memory_bytes=0)
        fill_cache(dataloaders(df, disk, False, 0), n_workers=2)
        say('Per entry (ms), read from the disk store (page cache):\n')
        say('| entry | size (MiB) | read, unchecked | read, checked | CRC-32 alone | added |')
        say('|---|---|---|---|---|---|')
        for kind, r in per_entry(disk).items():
            say(f"| {kind} | {r['mib']:.2f} | {r['unchecked']:.3f} | {r['checked']:.3f} | {r['crc']:.3f} | "
                f"{(r['checked'] - r['unchecked']) / r['unchecked'] * 100:+.1f}% |")
        say('\nPer cached epoch (an epoch reads every image and mask once, and augments them). "in the check" is the '
            'time spent inside the checksum function during the checked epochs (timed around each call, so other load '
            'on the machine hardly affects it); the epoch times are medians of alternating runs:\n')
        say('| cache | epoch, unchecked (s) | epoch, checked (s) | in the check per epoch (ms) | share of the epoch |')
        say('|---|---|---|---|---|')
        memory = VolumeCache(tmp / 'with_memory')
        fill_cache(dataloaders(df, memory, False, 0), n_workers=2)
        spent = []
        def timed(arr, meta):
            t = time.perf_counter(); r = checked(arr, meta); spent.append(time.perf_counter() - t); return r
        for label, cache in (('disk only (`memory_bytes=0`, as in DataLoader workers)', disk), ('default: memory layer in front', memory)):
            dls = dataloaders(df, cache, False, 0)
            epoch(dls)                                          # warm: the memory layer fills, pages are cached
            times, inside = {'checked': [], 'unchecked': []}, []
            for _ in range(repeat):                              # alternate so that load changes hit both alike
                for name in ('unchecked', 'checked'):
                    spent.clear()
                    with mock.patch.object(vc, '_checksum', unchecked if name == 'unchecked' else timed):
                        times[name].append(epoch(dls))
                    if name == 'checked': inside.append(sum(spent))
            u, c, i = np.median(times['unchecked']), np.median(times['checked']), np.median(inside)
            say(f'| {label} | {u:.3f} | {c:.3f} | {i * 1e3:.1f} | {i / c * 100:.1f}% |')
        say(f'\nLoad average at the end: {os.getloadavg()[0]:.2f}.')
    if args.out: Path(args.out).write_text('\n'.join(lines) + '\n')


if __name__ == '__main__': main()
