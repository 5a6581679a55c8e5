"""Run by tests/test_distributed.py under torchrun (several processes): trains a tiny UNet with an auxiliary
(deep-supervision) head on phantoms and writes, per process, what it saw and its final weights to OUT.

    torchrun ... tests/distributed_check.py DATA.csv CACHE_FOLDER OUT   (the arguments of the README's train.py)

It trains on whole volumes (OUT/volumes), then on patches (OUT/patches).
"""
import json, os, sys
from pathlib import Path
import pandas as pd
import torch
from torch import nn
from fastMONAI.vision_all import *
from fastMONAI.vision_distributed import distrib_ctx

csv, cache, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
rank = int(os.environ['RANK'])
df = pd.read_csv(csv)

class AuxUNet(nn.Module):
    "A UNet with an auxiliary head that is trained through the loss only every other step (deep supervision off and on)."
    def __init__(self):
        super().__init__()
        self.unet = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(4, 8), strides=(2,), num_res_units=0)
        self.head, self.aux = nn.Conv3d(4, 1, 1), nn.Conv3d(4, 1, 1)
    def forward(self, x):
        f = self.unet(x)
        return (self.head(f), self.aux(f)) if self.training else self.head(f)

_dice = DiceLoss(sigmoid=True)
step = [0]
def loss(pred, targ):
    targ = as_tensor(targ).float()
    if not isinstance(pred, tuple): return _dice(as_tensor(pred), targ)
    step[0] += 1
    main = _dice(as_tensor(pred[0]), targ)
    return main + 0.5 * _dice(as_tensor(pred[1]), targ) if step[0] % 2 else main   # the aux head unused in every other step

def train(patches: bool):
    set_seed(0, reproducible=True)
    if patches:
        dls = MedPatchDataLoaders.from_df(df, 'img_path', 'mask_path', valid_col='is_val', bs=2, seed=0,
                                          patch_config=PatchConfig(patch_size=16, samples_per_volume=2, queue_length=8, queue_num_workers=0,
                                                                   sampler_type='label', reorder=True, resample=1.5))
    else:
        dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='mask_path', y_block=MedMaskBlock, valid_col='is_val',
                                          item_tfms=[ZNormalization(), PadOrCrop(16), RandomFlip(p=0.5)], reorder=True, resample=1.5, bs=2,
                                          num_workers=0, cache=cache)
    seen = []
    class SeenBatches(Callback):
        "Which files each training batch holds (before fastai casts the batch to plain tensors)."
        order = -2
        def before_batch(self):
            if self.training and not patches:
                seen.append([self.epoch] + [str(g['source'].path) for g in self.learn.xb[0].__dict__['batch_geometry']])
    class SeenSubjects(Callback):
        "Which subjects this process's patch queue draws from this epoch (after `distrib_ctx` told its sampler the epoch)."
        order = 13
        def before_train(self):
            queue = getattr(self.dl.dataset, 'queue', None)
            if queue is not None: seen.append([self.epoch] + [queue.subjects_dataset.dry_iter()[i]['path'] for i in queue.subject_sampler])
    learn = Learner(dls, AuxUNet(), loss_func=loss, metrics=[binary_dice_score], cbs=[SeenBatches(), SeenSubjects()])
    with distrib_ctx(learn), learn.no_bar(): learn.fit(3, 3e-2)
    folder = out / ('patches' if patches else 'volumes'); folder.mkdir(parents=True, exist_ok=True)
    torch.save(learn.model.state_dict(), folder / f'weights_{rank}.pt')
    (folder / f'seen_{rank}.json').write_text(json.dumps(dict(seen=seen, values=[list(map(float, v)) for v in learn.recorder.values])))


for patches in (False, True): train(patches)
