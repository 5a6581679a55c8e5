"""The two examples of the JOSS paper, as written in `API.md`, against an offline mirror.

`FASTMONAI_DATA_MIRROR` points at small archives in the upstream formats (`nodulemnist3d.npz`, `ixi_tiny.zip`,
`IXI.xls`, built in `conftest.py`), so the downloaders run their real code paths. The snippets below differ
from the paper only in sizes (volume and network sizes, epochs) and in the names the paper leaves undefined
(`weights`, `size`, the UNet arguments); the names and the call structure are the paper's.
"""
import pytest
from fastMONAI.vision_all import *
from conftest import drawn_axes

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::FutureWarning', 'ignore::DeprecationWarning')


def test_paper_classification_nodulemnist3d(offline_workdir):
    set_seed(0, reproducible=True)
    # --- the paper's example (a); sizes unchanged (MedMNIST volumes are 28³); 96 volumes fill one batch of 64 ---
    df, _ = download_NoduleMNIST3D(max_workers=8)
    weights = get_class_weights(df.labels)
    dls = MedImageDataLoaders.from_df(df, fn_col='img_path', label_col='labels',
            item_tfms=[ZNormalization(), PadOrCrop(size=28), RandomAffine(degrees=35, isotropic=True)],
            resample=1, bs=64)
    dls.show_batch(max_n=2, anatomical_plane=2)
    model = Classifier(in_shape=[1,28,28,28], classes=2, channels=(8,16,32), strides=(2,2,2,2))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(weight=weights), metrics=accuracy)
    learn.fit_one_cycle(4); learn.show_results(max_n=2, anatomical_plane=2)
    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix(); interp.plot_top_losses(k=2, anatomical_plane=2)
    preds, targs = learn.tta(n=4); accuracy(preds, targs)
    # --- what it produced ---
    assert (offline_workdir.parent/'data'/'NoduleMNIST3D'/'train_images').is_dir()
    assert set(df.labels) == {'b', 'm'} and list(dls.vocab) == ['b', 'm'] and len(df) == 96
    assert len(drawn_axes()) == 2
    assert preds.shape == (len(dls.valid_ds), 2) and 0 <= float(accuracy(preds, targs)) <= 1


def test_paper_segmentation_ixi_tiny(offline_workdir, monkeypatch):
    # `lr_find()` runs 100 iterations; with worker processes (fastai's default) each pass over this tiny set
    # would restart them. The classification example above keeps the default workers.
    monkeypatch.setattr(defaults, 'cpus', 0)
    set_seed(0, reproducible=True)
    # --- the paper's example (b); sizes: PadOrCrop [48,48,96] -> [16,16,16], a small UNet, few epochs ---
    STUDY_DIR = download_ixi_tiny(path=Path('../data')); df = pd.read_csv(STUDY_DIR/'dataset.csv')
    med_dataset = MedDataset(path=STUDY_DIR/'image', reorder=True, max_workers=6)
    med_dataset.summary(); resample, reorder = med_dataset.suggestion()
    img_size = med_dataset.get_largest_img_size(resample=resample)
    size = [16, 16, 16]
    item_tfms = [ZNormalization(), PadOrCrop(size), RandomAffine(scales=0.1, degrees=5, p=0.5), RandomFlip(p=0.5)]
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), splitter=RandomSplitter(valid_pct=0.2, seed=42),
                          get_x=ColReader('t1_path'), get_y=ColReader('labels'), item_tfms=item_tfms,
                          reorder=reorder, resample=resample)
    dls = dblock.dataloaders(df, bs=8); dls.show_batch(max_n=2, anatomical_plane=2)
    learn = Learner(dls, UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
                    loss_func=CustomLoss(loss_func=DiceFocalLoss(sigmoid=True)),
                    opt_func=ranger, metrics=[binary_dice_score, binary_hausdorff_distance])
    lr = learn.lr_find(); learn.fit_one_cycle(2, lr.valley); learn.save('model-1')
    learn.export('models/export.pkl'); store_variables(pkl_fn='models/vars.pkl', size=size, reorder=reorder, resample=resample)
    # --- what it produced ---
    assert len(df) == 20 and {'t1_path', 'subject_id', 'gender', 'age_at_scan', 'labels'} <= set(df.columns)
    assert reorder is True and len(resample) == 3 and len(img_size) == 3
    assert len(plt.get_fignums()) >= 2           # show_batch and lr_find drew
    for f in ('models/model-1.pth', 'models/export.pkl', 'models/vars.pkl'): assert Path(f).is_file(), f
    assert load_variables(pkl_fn='models/vars.pkl') == [size, reorder, list(resample)]
    learn_inf = load_learner('models/export.pkl')
    mask, *_ = learn_inf.predict(df.t1_path[0])
    assert isinstance(mask, MedMask) and tuple(mask.shape[-3:]) == tuple(size)
