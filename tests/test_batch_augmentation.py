"""The paper's augmentation moved onto batches changes nothing a model learns: a tiny segmenter trained with
`RandomAffine`/`RandomFlip` as item transforms (TorchIO, item by item) and with the same transforms run on whole
batches by their twins (`MedDataBlock`'s default) reaches the same Dice within run-to-run noise.
"""
import pytest
from fastMONAI.vision_all import *

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::FutureWarning', 'ignore::DeprecationWarning')

RESAMPLE, SIZE = 1.5, [16, 16, 16]
ITEM_TFMS = [ZNormalization(), PadOrCrop(SIZE), RandomAffine(scales=0.1, degrees=10, p=0.5), RandomFlip(p=0.5)]


def dice_after_training(df, cache, batch_augment: bool, seed: int) -> tuple:
    set_seed(seed, reproducible=True)
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), splitter=ColSplitter('is_val'),
                          get_x=ColReader('img_path'), get_y=ColReader('mask_path'), item_tfms=ITEM_TFMS,
                          reorder=True, resample=RESAMPLE, cache=cache, batch_augment=batch_augment)
    dls = dblock.dataloaders(df, bs=4, num_workers=0)
    assert len(dls.batch_augmentation) == (2 if batch_augment else 0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16), strides=(2,), num_res_units=1)
    learn = Learner(dls, model, loss_func=CustomLoss(loss_func=DiceLoss(sigmoid=True)), metrics=[binary_dice_score])
    with learn.no_bar(), learn.no_logging():
        before = float(learn.validate()[1])
        learn.fit_one_cycle(8, 3e-2)
        return before, float(learn.validate()[1])


def test_batch_and_item_augmentation_learn_alike(segmentation_study, tmp_path):
    cache = VolumeCache(tmp_path/'cache')
    (item_before, item), (batch_before, batch) = [dice_after_training(segmentation_study, cache, b, seed=0) for b in (False, True)]
    assert item_before == batch_before                       # the same untrained model, the same validation set
    assert item > item_before + 0.2 and batch > batch_before + 0.2, (item_before, item, batch)   # both learned
    assert abs(item - batch) < 0.1, (item, batch)            # and equally well, within noise
