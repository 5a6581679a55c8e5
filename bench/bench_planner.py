"""The automatic plan against the hand-written configurations of the tutorials, on the same data and time budget.

A benchmark, not a test: run it on a quiet machine. Every configuration trains on the same training cases
for the same wall-clock budget (data preparation, learning-rate search and training all count), is saved with
`vision_export.save_model`, loaded back, and predicts held-out test scans through the prediction core; the
score is the Dice of each foreground label on each test scan's own grid, averaged.

    python bench/bench_planner.py                          # 32 training + 12 test cases, 240 s per configuration
    python bench/bench_planner.py --budget 120 --seeds 0   # quicker
    python bench/bench_planner.py --configs auto quickstart_ixi

The data (`fastMONAI.testing.make_planning_study`): an anisotropic, multi-class phantom study — in-plane
voxels of 0.8-1.2 mm, slices of 3, 4 or 5 mm along S, stored in four orientations (RAS, LPS, PIR, ASL), a
field of view of 96 x 96 x 64 mm, an organ with two concentric labels inside a body, MR-like intensities (a gain
drawn per case, a bias field, Rician-like noise).

Configurations (all with 3 output channels and the multi-class loss of the segmentation tutorial,
`DiceCELoss(softmax=True, to_onehot_y=True)`, and the same way to spend the budget, `vision_planner.fit_within`: a
timed warm-up epoch at a tenth of the learning rate, then `fit_one_cycle` for as many epochs as fit):

- `auto`: `plan_experiment(train, budget=B)` then `train_experiment(plan, fold=0, budget=B)`: no hand-set value;
- `paper_ixi`: the paper's IXI Tiny tutorial: `MedDataset.suggestion()` for reorder/resample, ZNormalization,
  PadOrCrop([48, 48, 96]), RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5), bs 8, UNet
  (16, 32, 64, 128, 256; strides 2; 2 residual units), ranger at `lr_find().valley`;
- `offline_tutorial`: the tutorial's offline story: reorder, 1.5 mm isotropic, PadOrCrop(16), RandomAffine(scales=0.1,
  degrees=10, p=0.5), RandomFlip(p=0.5), bs 2, UNet(8, 16, 32; 1 residual unit), ranger at lr 0.3;
- `quickstart_phantom`: `fastmonai quickstart` (phantoms): reorder, 1.5 mm, PadOrCrop(largest size rounded up to 8),
  UNet(8, 16, 32, 64; batch norm), Adam at 2e-2, bs 2;
- `quickstart_ixi`: `fastmonai quickstart --data ixi-tiny`: the suggested spacing, PadOrCrop(largest size after
  resampling, rounded up to 16), RandomFlip(p=0.5), UNet(8, 16, 32, 64; batch norm), Adam at 1e-2, bs 4;
- `patch_tutorial`: the patch notebook: 16³ patches at 2 mm, label sampler, RandomFlip, UNet(8, 16), Adam at 3e-2, bs 4.
"""
from __future__ import annotations
import argparse, json, os, platform, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import torch

warnings.filterwarnings('ignore')
from fastai.vision.all import ColReader, ColSplitter, ImageBlock, ranger, Adam, set_seed
from monai.losses import DiceCELoss
from fastMONAI.testing import make_planning_study
from fastMONAI.vision_core import MedImage, MedMask, med_img_reader
from fastMONAI.vision_augmentation import ZNormalization, PadOrCrop, RandomAffine, RandomFlip
from fastMONAI.vision_data import MedDataBlock, MedMaskBlock
from fastMONAI.vision_learner import Learner
from fastMONAI.vision_loss import CustomLoss
from fastMONAI.vision_metrics import multi_dice_score
from fastMONAI.vision_export import create_model, save_model, load_model
from fastMONAI.vision_patch import PatchConfig, MedPatchDataLoaders
from fastMONAI.dataset_info import MedDataset
from fastMONAI.vision_planner import plan_experiment, train_experiment, fit_within

FOV, IN_PLANE, SLICES = (96., 96., 64.), (0.8, 1.2), (3., 4., 5.)
LABELS = [0, 1, 2]

def dice_per_label(pred: np.ndarray, truth: np.ndarray) -> list:
    return [float(2 * ((pred == k) & (truth == k)).sum() / max((pred == k).sum() + (truth == k).sum(), 1)) for k in LABELS[1:]]

def evaluate(folder, test: pd.DataFrame) -> dict:
    "Dice per label of the saved model's predictions on the test scans, on each scan's own grid."
    model = load_model(folder)
    scores = []
    for _, r in test.iterrows():
        pred = model.predict(r.img_path)[0].numpy()
        truth = med_img_reader(r.mask_path, dtype=MedMask)[0].numpy()
        scores.append(dice_per_label(pred, truth))
    scores = np.asarray(scores)
    return dict(dice=float(scores.mean()), dice_per_label=scores.mean(0).round(4).tolist())

def fit_budget(learn, lr, budget, start):
    "What `train_experiment` does with a budget: a timed warm-up epoch, then fit_one_cycle for as many epochs as fit."
    with learn.no_bar(), learn.no_logging(): fitted = fit_within(learn, budget, lr, start)
    return fitted['epochs'], fitted['epoch_seconds']

def hand_block(item_tfms, reorder, resample):
    return MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img_path'), get_y=ColReader('mask_path'),
                        splitter=ColSplitter('is_valid'), item_tfms=item_tfms, reorder=reorder, resample=resample, cache=False)

def loss(): return CustomLoss(DiceCELoss(softmax=True, to_onehot_y=True))

def run_hand(name, train, budget, out):
    "Train one tutorial configuration on `train` (its `is_valid` rows validate) within `budget`; returns the model folder and info."
    start = time.perf_counter()
    ds = MedDataset(img_list=list(train.img_path), reorder=True)
    suggested, reorder = ds.suggestion()
    def largest(resample, multiple): return [int(np.ceil(s / multiple) * multiple) for s in MedDataset(img_list=list(train.img_path), reorder=reorder).get_largest_img_size(resample=resample)]
    lr, info = None, {}
    if name == 'patch_tutorial':
        config = PatchConfig(patch_size=16, samples_per_volume=6, queue_length=48, queue_num_workers=0, sampler_type='label',
                             label_probabilities={0: 0.5, 1: 0.25, 2: 0.25}, reorder=True, resample=2, aggregation_mode='hann', patch_overlap=4)
        dls = MedPatchDataLoaders.from_df(train, 'img_path', 'mask_path', valid_col='is_valid', patch_config=config,
                                          pre_patch_tfms=[ZNormalization()], patch_tfms=[RandomFlip(p=0.5)], bs=4)
        model = create_model('UNet', spatial_dims=3, in_channels=1, out_channels=3, channels=[8, 16], strides=[2], num_res_units=1)
        learn, lr = Learner(dls, model, loss_func=loss(), metrics=[multi_dice_score]), 3e-2
        plan = dls.plan
    else:
        if name == 'paper_ixi':
            tfms, bs = [ZNormalization(), PadOrCrop([48, 48, 96]), RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5)], 8
            block, opt = hand_block(tfms, reorder, suggested), ranger
            arch = dict(channels=[16, 32, 64, 128, 256], strides=[2, 2, 2, 2], num_res_units=2)
        elif name == 'offline_tutorial':
            tfms, bs = [ZNormalization(), PadOrCrop([16, 16, 16]), RandomAffine(scales=0.1, degrees=10, p=0.5), RandomFlip(p=0.5)], 2
            block, opt, lr = hand_block(tfms, reorder, 1.5), ranger, 0.3
            arch = dict(channels=[8, 16, 32], strides=[2, 2], num_res_units=1)
        elif name == 'quickstart_phantom':
            tfms, bs = [ZNormalization(), PadOrCrop(largest(1.5, 8))], 2
            block, opt, lr = hand_block(tfms, True, 1.5), Adam, 2e-2
            arch = dict(channels=[8, 16, 32, 64], strides=[2, 2, 2], num_res_units=1, norm='batch')
        elif name == 'quickstart_ixi':
            tfms, bs = [ZNormalization(), PadOrCrop(largest(suggested, 16)), RandomFlip(p=0.5)], 4
            block, opt, lr = hand_block(tfms, reorder, suggested), Adam, 1e-2
            arch = dict(channels=[8, 16, 32, 64], strides=[2, 2, 2], num_res_units=1, norm='batch')
        else: raise ValueError(name)
        dls = block.dataloaders(train, bs=bs, num_workers=0)
        model = create_model('UNet', spatial_dims=3, in_channels=1, out_channels=3, **arch)
        learn = Learner(dls, model, loss_func=loss(), opt_func=opt, metrics=[multi_dice_score])
        plan = dls.plan
        if lr is None:
            with learn.no_bar(), learn.no_logging(): lr = float(learn.lr_find(num_it=30, show_plot=False).valley)
            info['lr_find'] = lr
    epochs, epoch = fit_budget(learn, lr, budget, start)
    seconds = time.perf_counter() - start
    folder = save_model(learn, out/name, plan=plan.replace(labels=LABELS), overwrite=True)
    return folder, dict(info, epochs=epochs, epoch_seconds=round(epoch, 2), train_seconds=round(seconds, 1), lr=lr,
                        valid_dice=float(learn.recorder.values[-1][-1]))

def run_auto(train, budget, out):
    start = time.perf_counter()
    eplan = plan_experiment(train.drop(columns=['is_valid']), budget=budget, cache=False, progress=False)
    eplan.save(out/'auto_plan.json')
    learn, folder = train_experiment(eplan, fold=0, data=train.drop(columns=['is_valid']), output=out/'auto', budget=budget - (time.perf_counter() - start),
                                     overwrite=True, quiet=True)
    seconds = time.perf_counter() - start
    i = learn.experiment_info
    return folder, dict(epochs=i['epochs'], epoch_seconds=i['warmup_epoch_seconds'], train_seconds=round(seconds, 1), lr=eplan.lr,
                        valid_dice=i['final'].get('multi_dice_score'), input=eplan.input_size(), whole_volume=eplan.whole_volume,
                        spacing=list(eplan.plan.target_spacing), filters=list(eplan.network['kwargs']['filters']),
                        batch_size=eplan.batch_size), eplan

CONFIGS = ['auto', 'paper_ixi', 'offline_tutorial', 'quickstart_phantom', 'quickstart_ixi', 'patch_tutorial']

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n-train', type=int, default=32); p.add_argument('--n-test', type=int, default=12)
    p.add_argument('--budget', type=float, default=240., help='seconds per configuration (preparation + training)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0]); p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--modality', default='mr'); p.add_argument('--threads', type=int, default=1, help='torch threads (1: a shared machine; two busy threads are many times slower)')
    p.add_argument('--out', default='bench/out/planner')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({args.threads} threads), "
          f"load {os.getloadavg()[0]:.2f}; {args.n_train} training + {args.n_test} test cases, budget {args.budget:g} s", flush=True)
    results = []
    for seed in args.seeds:
        data = Path(tempfile.mkdtemp())
        study = make_planning_study(data, n=args.n_train + args.n_test, fov=FOV, in_plane=IN_PLANE, slice_thickness=SLICES,
                                    n_labels=2, modality=args.modality, seed=seed)
        train, test = study.iloc[:args.n_train].reset_index(drop=True), study.iloc[args.n_train:].reset_index(drop=True)
        folds = None
        for name in args.configs:
            set_seed(seed)
            if name == 'auto':
                folder, info, eplan = run_auto(train.assign(is_valid=False), args.budget, out)
                folds = list(eplan.folds[0])
            else:
                valid = folds or list(plan_experiment(train, base_filters=8, cache=False, progress=False).folds[0])
                names = [Path(p).name.split('.')[0] for p in train.img_path]
                folder, info = run_hand(name, train.assign(is_valid=[n in set(valid) for n in names]), args.budget, out)
            score = evaluate(folder, test)
            results.append(dict(seed=seed, config=name, **score, **info))
            print(json.dumps(results[-1]), flush=True)
    (out/'results.json').write_text(json.dumps(results, indent=1))
    df = pd.DataFrame(results)
    table = df.groupby('config', sort=False).agg(dice=('dice', 'mean'), dice_min=('dice', 'min'), epochs=('epochs', 'mean'),
                                                 train_seconds=('train_seconds', 'mean'))
    print(table.round(3).to_string(), flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")

if __name__ == '__main__': main()
