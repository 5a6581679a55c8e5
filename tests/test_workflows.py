"""End-to-end workflows on small generated studies: classification, binary and multi-class segmentation,
regression. Each one reads files in mixed orientations with anisotropic voxels (reordered and resampled),
trains a tiny model on the CPU, checks that it learned, draws its pictures and round-trips it through disk.
"""
import pytest
from fastMONAI.vision_all import *
from fastcore.test import test_eq
from conftest import drawn_axes

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::FutureWarning', 'ignore::DeprecationWarning')

RESAMPLE, SIZE = 1.5, [16, 16, 16]   # 20×20×16 voxels of 1×1×1.5 mm → about 13–14 voxels per axis at 1.5 mm


def fit(learn, n_epoch: int, lr: float) -> tuple:
    "Train quietly; returns the validation loss before and after (the untrained model is the baseline)."
    with learn.no_bar(), learn.no_logging():
        before = float(learn.validate()[0])
        learn.fit_one_cycle(n_epoch, lr)
    after = float(learn.recorder.values[-1][1])
    return before, after


def valid_metric(learn, i: int=1) -> float:
    "Metric `i` of `learn.validate()` (0 is the loss)."
    return float(learn.validate()[i])


def plain(t) -> torch.Tensor: return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else torch.as_tensor(t)


# ---------------------------------------------------------------------------------------------------------
# Classification: small vs large ellipsoid, MONAI `Classifier`, class-weighted cross-entropy

@pytest.fixture(scope='module')
def classifier(phantom_study, tmp_path_factory):
    set_seed(0, reproducible=True)
    df = phantom_study
    df = df.drop(df.index[(df.label == 'large') & ~df.is_val][:5])     # imbalanced training set: 15 small, 10 large
    dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='label', valid_col='is_val',
                                      item_tfms=[ZNormalization(), PadOrCrop(SIZE), RandomAffine(degrees=15, isotropic=True)],
                                      reorder=True, resample=RESAMPLE, bs=8, num_workers=0)
    weights = get_class_weights(df.label[~df.is_val])       # balanced weights, in the vocab's (sorted) order
    assert weights[0] > weights[1]
    model = Classifier(in_shape=[1, *SIZE], classes=2, channels=(8, 16, 32), strides=(2, 2, 2))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(weight=weights), metrics=accuracy,
                    path=tmp_path_factory.mktemp('classifier'))
    learn.losses_before_after = fit(learn, 4, 3e-3)       # (at 1e-2 the validation loss of 10 items jumps from run to run)
    return learn


def test_classification_learns(classifier):
    learn = classifier
    test_eq(list(learn.dls.vocab), ['large', 'small'])
    before, after = learn.losses_before_after
    assert after < 0.5 * before, (before, after)
    assert valid_metric(learn) >= 0.8                      # chance is 0.5 on the balanced held-out set
    with learn.no_bar(): preds, targs = learn.tta(n=2)
    assert float(accuracy(preds, targs)) >= 0.8
    test_eq(preds.shape, (len(learn.dls.valid_ds), 2))


def test_classification_plots(classifier):
    learn = classifier
    learn.dls.show_batch(max_n=2, anatomical_plane=2)
    assert len(drawn_axes()) == 2
    with learn.no_bar(): learn.show_results(max_n=2, anatomical_plane=2)
    titles = [ax.get_title() for ax in drawn_axes()]
    assert len(titles) == 2 and all('/' in t for t in titles)
    with learn.no_bar(): interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix()
    assert plt.gcf().axes and interp.confusion_matrix().sum() == len(learn.dls.valid_ds)
    interp.plot_top_losses(k=2, anatomical_plane=2)
    assert len(drawn_axes()) == 2


def test_classification_predict_export_save(classifier, phantom_study, tmp_path):
    learn, df = classifier, phantom_study
    path = df.img_path[df.is_val].iloc[0]
    with learn.no_bar():
        label, idx, probs = learn.predict(path)
        valid_probs, _ = learn.get_preds(ds_idx=1)
    assert label in ('large', 'small') and label == learn.dls.vocab[int(idx)]
    assert torch.allclose(probs, valid_probs[0], atol=1e-5)   # predict == the validation pipeline for that file

    learn.export(tmp_path/'export.pkl')
    learn_inf = load_learner(tmp_path/'export.pkl')
    with learn_inf.no_bar(): label2, _, probs2 = learn_inf.predict(path)
    assert label2 == label and torch.allclose(probs2, probs, atol=1e-6)

    learn.save('classifier-1')
    fresh = Learner(learn.dls, Classifier(in_shape=[1, *SIZE], classes=2, channels=(8, 16, 32), strides=(2, 2, 2)),
                    loss_func=learn.loss_func, metrics=accuracy, path=learn.path)
    fresh.load('classifier-1')
    with fresh.no_bar(): assert torch.allclose(fresh.predict(path)[2], probs, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Binary segmentation: UNet / AttentionUnet, DiceFocal loss through `CustomLoss`, ranger, lr_find

def seg_dls(df, bs=4):
    item_tfms = [ZNormalization(), PadOrCrop(SIZE), RandomAffine(scales=0.1, degrees=10, p=0.5), RandomFlip(p=0.5)]
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), splitter=ColSplitter('is_val'),
                          get_x=ColReader('img_path'), get_y=ColReader('mask_path'), item_tfms=item_tfms,
                          reorder=True, resample=RESAMPLE)
    return dblock.dataloaders(df, bs=bs, num_workers=0)


MODELS = {
    'UNet': lambda out: UNet(spatial_dims=3, in_channels=1, out_channels=out, channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
    'AttentionUnet': lambda out: AttentionUnet(spatial_dims=3, in_channels=1, out_channels=out, channels=(8, 16, 32), strides=(2, 2)),
}


EPOCHS_LR = {'UNet': (6, 0.3), 'AttentionUnet': (4, 0.3)}


@pytest.mark.parametrize('arch', list(MODELS))
def test_binary_segmentation(arch, segmentation_study, tmp_path):
    set_seed(0, reproducible=True)
    df = segmentation_study
    dls = seg_dls(df, bs=2)
    x, y = dls.one_batch()
    assert type(y) is MedMask and set(y.unique().tolist()) <= {0., 1.}
    learn = Learner(dls, MODELS[arch](1), loss_func=CustomLoss(loss_func=DiceFocalLoss(sigmoid=True)),
                    opt_func=ranger, metrics=[binary_dice_score], path=tmp_path)
    with learn.no_bar(): lr = learn.lr_find(num_it=20, show_plot=True)
    assert 1e-6 < lr.valley < 10 and drawn_axes() == [] and plt.gcf().axes      # the lr plot has axes, no images
    plt.close('all')
    # ranger (RAdam + LookAhead) warms up slowly: tiny runs need a large learning rate
    before, after = fit(learn, *EPOCHS_LR[arch])
    assert after < 0.8 * before, (before, after)
    dice = valid_metric(learn)
    assert dice >= 0.7, dice                   # an untrained model scores about 0.2 (everything foreground)

    learn.dls.show_batch(max_n=2, anatomical_plane=2)
    assert len(drawn_axes()) == 4
    with learn.no_bar(): learn.show_results(max_n=2, anatomical_plane=2)
    assert len(drawn_axes()) == 6
    with learn.no_bar(): Interpretation.from_learner(learn).plot_top_losses(k=2, anatomical_plane=2)
    assert len(drawn_axes()) == 6

    if arch != 'UNet': return   # the round trips below do not depend on the architecture
    path = df.img_path[df.is_val].iloc[0]
    with learn.no_bar(): mask, *_ = learn.predict(path)
    assert isinstance(mask, MedMask) and mask.shape[-3:] == tuple(SIZE) and set(mask.unique().tolist()) <= {0., 1.}
    # the predicted mask carries the grid it was predicted on, and where it came from
    assert mask.orientation == 'RAS' and np.allclose(mask.spacing, RESAMPLE) and mask.source.path == str(path)
    learn.save('model-1')
    (tmp_path/'models').mkdir(exist_ok=True)
    learn.export('models/export.pkl')
    store_variables(pkl_fn=tmp_path/'models'/'vars.pkl', size=SIZE, reorder=True, resample=RESAMPLE)
    size, reorder, resample = load_variables(pkl_fn=tmp_path/'models'/'vars.pkl')
    assert (size, reorder, resample) == (SIZE, True, RESAMPLE)
    learn_inf = load_learner(tmp_path/'models'/'export.pkl')
    with learn_inf.no_bar(): mask2, _, raw2 = learn_inf.predict(path)
    with learn.no_bar(): _, _, raw = learn.predict(path)
    assert torch.equal(plain(mask2), plain(mask)) and torch.allclose(plain(raw2), plain(raw), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Multi-class segmentation: two concentric labels, softmax DiceCE, `multi_dice_score`

def test_multiclass_segmentation(multiclass_study, tmp_path):
    set_seed(0, reproducible=True)
    df = multiclass_study
    dls = seg_dls(df)
    _, y = dls.one_batch()
    assert set(y.unique().tolist()) == {0., 1., 2.}
    dls = seg_dls(df, bs=2)
    learn = Learner(dls, MODELS['UNet'](3), loss_func=CustomLoss(DiceCELoss(softmax=True, to_onehot_y=True)),
                    opt_func=ranger, metrics=[multi_dice_score], path=tmp_path)
    before, after = fit(learn, 6, 0.3)
    assert after < 0.7 * before, (before, after)
    with learn.no_bar(): preds, targs = learn.get_preds(ds_idx=1)
    per_class = plain(multi_dice_score(preds, targs)).flatten()
    assert len(per_class) == 2 and (per_class >= 0.6).all(), per_class     # one score per foreground label
    with learn.no_bar(): mask, *_ = learn.predict(df.img_path[df.is_val].iloc[0])
    assert set(plain(mask).unique().tolist()) <= {0., 1., 2.} and 2. in plain(mask).unique().tolist()
    with learn.no_bar(): learn.show_results(max_n=2, anatomical_plane=1)
    assert len(drawn_axes()) == 6


# ---------------------------------------------------------------------------------------------------------
# Regression: the ellipsoid's volume in mL, MONAI `Regressor`

def volume_regressor() -> nn.Module:
    """Three strided MONAI convolutions, global average pooling, a linear head.

    Averaging over the whole volume suits a target that is a sum over voxels; MONAI's `Regressor` (instance norm,
    then a linear layer over every voxel of the last map) trained erratically on these tiny sets.
    """
    from monai.networks.blocks import Convolution
    return nn.Sequential(Convolution(3, 1, 8, strides=2, norm='batch'), Convolution(3, 8, 16, strides=2, norm='batch'),
                         Convolution(3, 16, 32, strides=2, norm='batch'), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 1))


def test_regression(phantom_study, tmp_path):
    "No z-normalisation here: it would zero the mean intensity, which is what tells the ellipsoid's volume."
    set_seed(0, reproducible=True)
    df = phantom_study
    dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='volume_ml', valid_col='is_val',
                                      y_block=RegressionBlock, item_tfms=[PadOrCrop(SIZE), RandomFlip(p=0.5)],
                                      reorder=True, resample=RESAMPLE, bs=4, num_workers=0)
    learn = Learner(dls, volume_regressor(), loss_func=L1LossFlat(), metrics=mae, path=tmp_path)
    before, after = fit(learn, 12, 1e-2)
    assert after < 0.6 * before, (before, after)
    valid_y = df.volume_ml[df.is_val]
    baseline = float((valid_y - df.volume_ml[~df.is_val].mean()).abs().mean())    # always predicting the training mean
    err = valid_metric(learn)
    assert err < 0.4 * baseline and err < 0.4 * valid_y.std(), (err, baseline, valid_y.std())
    learn.dls.show_batch(max_n=2)
    assert len(drawn_axes()) == 2
    with learn.no_bar(): learn.show_results(max_n=2)
    assert len(drawn_axes()) == 2
    row = df[df.is_val].iloc[1]
    with learn.no_bar(): pred = learn.predict(row.img_path)[0]
    assert abs(float(plain(pred).flatten()[0]) - row.volume_ml) < valid_y.std()
