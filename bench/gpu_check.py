"""GPU check: the CUDA paths that the CPU test suite cannot reach. A check, not a test; run it on a machine
with a GPU (it says so and exits 0 where there is none):

    python bench/gpu_check.py            # about a minute on one GPU
    python bench/gpu_check.py --device cpu   # the same checks on the CPU (to try the script itself)

It checks, on generated phantoms:
1. batch augmentation (`BatchRandomAffine`, `BatchRandomFlip`, intensity) runs on the GPU, keeps image and mask
   aligned, and its speed on the GPU vs the CPU; the paper's item transforms (`RandomAffine`, `RandomFlip`),
   moved onto batches by `MedDataBlock`, run on the GPU too, and give TorchIO's voxels there;
2. mixed-precision training (`learn.to_fp16()`) of a small UNet with `CustomLoss(DiceFocalLoss)` learns
   (Dice rises) and the batches' geometry survives the move to the device;
3. `PatchInferenceEngine(..., amp=True)` on the GPU agrees with the fp32 CPU prediction (Dice > 0.95);
4. `inference` on the GPU writes the prediction on the source grid (shape and affine as on disk);
5. distributed training (`vision_distributed.distrib_ctx` under `torchrun`): training throughput with 1 process vs one
   process per GPU (NCCL; on `--device cpu`, 1 vs 2 CPU processes over gloo), and the N-process run learns.
Prints one line per check and exits non-zero if any fails.
"""
import json, os, subprocess, sys, time, tempfile, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np
import torch

def main() -> int:
    device_name = sys.argv[sys.argv.index('--device') + 1] if '--device' in sys.argv else 'cuda'
    if device_name == 'cuda' and not torch.cuda.is_available():
        print('no CUDA device: nothing to check here'); return 0
    from fastMONAI.vision_all import (MedDataBlock, MedMaskBlock, ImageBlock, MedImage, ColReader, ColSplitter, Learner,
                                      UNet, CustomLoss, DiceFocalLoss, binary_dice_score, ZNormalization, PadOrCrop,
                                      BatchRandomAffine, BatchRandomFlip, BatchRandomNoise, PatchConfig,
                                      PatchInferenceEngine, inference, RandomAffine, RandomFlip, batch_twin, apply_tio)
    import torchio as tio
    from fastMONAI.testing import make_phantom_dataset
    import nibabel as nib
    dev, failures = torch.device(device_name), []
    def check(name, ok, detail=''):
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
        if not ok: failures.append(name)
    print(torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'CPU', 'torch', torch.__version__)
    tmp = Path(tempfile.mkdtemp())
    df = make_phantom_dataset(tmp, n=24, shape=(48, 48, 32), spacing=(1., 1., 1.5), orientations=('RAS', 'LPS', 'PIR'), noise=0.3)
    df['is_val'] = [i % 6 == 5 for i in range(len(df))]
    def dls_on(device, batch_tfms=None, cache=True, augmentation=()):
        block = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img_path'), get_y=ColReader('mask_path'),
                             splitter=ColSplitter('is_val'), item_tfms=[ZNormalization(), PadOrCrop([48, 48, 48])] + list(augmentation),
                             batch_tfms=batch_tfms, reorder=True, resample=1., cache=cache)
        return block.dataloaders(df, bs=4, num_workers=0, device=device)

    # 1. batch augmentation on the device
    tfms = [BatchRandomFlip(p=0.5), BatchRandomAffine(scales=0.1, degrees=10, p=1.), BatchRandomNoise(p=0.5)]
    for device in sorted({'cpu', dev.type}, key=lambda d: d != 'cpu'):
        dls = dls_on(torch.device(device), tfms)
        x, y = dls.one_batch()
        if device == dev.type:
            check('batch augmentation runs on the device', x.device.type == dev.type and y.device.type == dev.type, f'({x.device}, {y.device})')
            inside = x[y > 0].mean() - x[y == 0].mean()
            check('image and mask stay aligned after GPU augmentation', float(inside) > 0.5, f'(contrast {float(inside):.2f})')
            check('mask labels preserved', set(y.unique().tolist()) <= {0., 1.})
        start = time.perf_counter()
        for _ in range(3):
            for b in dls.train: pass
        if device == 'cuda': torch.cuda.synchronize()
        print(f'     {device}: {3 * len(dls.train_ds) / (time.perf_counter() - start):.0f} volumes/s with batch augmentation')

    paper = dls_on(dev, augmentation=[RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5)])
    x, y = paper.one_batch()
    check('the paper\'s item augmentation runs on whole batches on the device', len(paper.batch_augmentation) == 2 and
          x.device.type == dev.type and set(y.unique().tolist()) <= {0., 1.}, f'({paper.batch_augmentation})')
    xv, yv = paper.valid.one_batch()
    twin = batch_twin(RandomAffine(scales=(1.1, 1.1), degrees=(7, 7), translation=(2, 2), p=1.))
    xo, yo = twin((xv, yv), split_idx=0)
    ref = [apply_tio(tio.Affine((1.1,) * 3, (7.,) * 3, (2.,) * 3, default_pad_value=0.), [xv[i].cpu(), yv[i].cpu()]) for i in range(len(xv))]
    err = max(float((xo[i].cpu() - r[0]).abs().max()) for i, r in enumerate(ref))
    check('batch twin on the device gives TorchIO\'s voxels', err < 1e-3, f'(max difference {err:.2e})')

    # 2. mixed precision training
    dls = dls_on(dev, tfms)
    learn = Learner(dls, UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64), strides=(2, 2)),
                    loss_func=CustomLoss(DiceFocalLoss(sigmoid=True)), metrics=binary_dice_score)
    if dev.type == 'cuda': learn = learn.to_fp16()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 1e-2)
    dice = float(learn.recorder.values[-1][-1])
    check('fp16 training learns', dice > 0.7, f'(valid Dice {dice:.3f})')
    xb, _ = dls.one_batch()
    check('geometry survives the move to the device', bool(xb.__dict__.get('batch_geometry')) and xb.device.type == dev.type)

    # 3. sliding-window inference with AMP vs fp32 on the CPU
    learn32 = learn.to_fp32() if dev.type == 'cuda' else learn
    path = df.img_path[df.is_val].iloc[0]
    cfg = PatchConfig(patch_size=[32, 32, 32], patch_overlap=8, reorder=True, resample=1.)
    gpu = PatchInferenceEngine(learn32, cfg, amp=dev.type == 'cuda').predict(path)
    learn32.model.cpu()
    cpu = PatchInferenceEngine(learn32, cfg, amp=False).predict(path)
    g, c = np.asarray(gpu) > 0, np.asarray(cpu) > 0
    agree = 2 * (g & c).sum() / max(g.sum() + c.sum(), 1)
    check('AMP patch inference agrees with fp32', agree > 0.95, f'(Dice {agree:.3f})')
    learn32.model.to(dev)

    # 4. whole-volume inference on the GPU, back on the source grid
    out = inference(learn32, fn=path, save_path=tmp / 'pred')
    src, pred = nib.load(str(path)), nib.load(str(out))
    check('inference on the GPU writes on the source grid', pred.shape == src.shape and np.allclose(pred.affine, src.affine))
    # 5. 1 GPU vs N GPUs: the same training under torchrun with 1 and with N processes (one per GPU)
    n_gpus = torch.cuda.device_count() if dev.type == 'cuda' else 2
    df.to_csv(tmp / 'data.csv', index=False)
    speed = {}
    for n in sorted({1, n_gpus}):
        res = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(n), __file__,
                              '--distributed-worker', str(tmp / 'data.csv'), dev.type], capture_output=True, text=True, timeout=900,
                             env={**os.environ, 'OMP_NUM_THREADS': '1' if dev.type == 'cpu' else os.environ.get('OMP_NUM_THREADS', '4')})
        line = [l for l in res.stdout.splitlines() if l.startswith('throughput')]
        check(f'distributed training on {n} process(es) runs', res.returncode == 0 and bool(line), res.stderr[-500:] if res.returncode else '')
        if line: speed[n] = json.loads(line[-1].split(' ', 1)[1])
    if len(speed) == 2 and n_gpus > 1:
        one, many = speed[1], speed[n_gpus]
        print(f"     {dev.type}: 1 process {one['volumes_per_s']:.1f} volumes/s, {n_gpus} processes {many['volumes_per_s']:.1f} volumes/s "
              f"(x{many['volumes_per_s'] / one['volumes_per_s']:.2f}); valid Dice {one['dice']:.3f} vs {many['dice']:.3f}")
        check(f'{n_gpus}-process training learns', many['dice'] > 0.5, f"(valid Dice {many['dice']:.3f})")
    print('all checks passed' if not failures else f'{len(failures)} failed: {failures}')
    return 1 if failures else 0

def distributed_worker(csv, device_type) -> int:
    "One process of check 5 (started by torchrun): train on the phantoms, print rank 0's throughput and Dice."
    import pandas as pd
    from fastMONAI.vision_all import (MedImageDataLoaders, MedMaskBlock, ZNormalization, PadOrCrop, Learner, UNet, CustomLoss,
                                      DiceCELoss, binary_dice_score, is_rank_zero, local_device, seed_everything)
    from fastMONAI.vision_distributed import distrib_ctx
    if device_type == 'cuda': torch.cuda.set_device(local_device('cuda'))
    seed_everything(0)
    df = pd.read_csv(csv)
    dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='mask_path', y_block=MedMaskBlock, valid_col='is_val',
                                      item_tfms=[ZNormalization(), PadOrCrop([48, 48, 48])], reorder=True, resample=1., bs=2,
                                      num_workers=0, device=local_device(device_type))
    learn = Learner(dls, UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64), strides=(2, 2)),
                    loss_func=CustomLoss(DiceCELoss(sigmoid=True)), metrics=binary_dice_score)
    with distrib_ctx(learn), learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)                                    # warm-up (and the cache filled)
        start = time.perf_counter(); learn.fit_one_cycle(6, 1e-2); seconds = time.perf_counter() - start
    if is_rank_zero():
        print('throughput', json.dumps(dict(volumes_per_s=6 * len(dls.train_ds) / seconds, dice=float(learn.recorder.values[-1][-1]))), flush=True)
    return 0

if __name__ == '__main__':
    if '--distributed-worker' in sys.argv:
        i = sys.argv.index('--distributed-worker'); sys.exit(distributed_worker(sys.argv[i + 1], sys.argv[i + 2]))
    sys.exit(main())
