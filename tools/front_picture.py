"""Draw the front page's picture (nbs/images/prediction.png): a model planned and trained by fastMONAI with no
hand-set value, predicting a scan it has not seen, shown on that scan's own grid in three planes.

    python tools/front_picture.py            # about two minutes on two CPU cores

The data are generated (`fastMONAI.testing.make_planning_study`: thick slices, four storage orientations, an
organ with two labels); the plan gets a 90-second budget.
"""
import sys, tempfile, warnings
from pathlib import Path
import torch
warnings.filterwarnings('ignore')
from fastMONAI.testing import make_planning_study
from fastMONAI.vision_planner import plan_experiment, train_experiment
from fastMONAI.vision_export import load_model
from fastMONAI.vision_viewer import save_three_plane_png

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / 'nbs' / 'images' / 'prediction.png'
torch.manual_seed(0); torch.set_num_threads(2)
work = Path(tempfile.mkdtemp())
study = make_planning_study(work / 'study', n=20, fov=(64., 64., 48.), seed=3)
train, new = study.iloc[:16].reset_index(drop=True), study.iloc[16:].reset_index(drop=True)
plan = plan_experiment(train, budget='90s', cache=False, progress=False)
learn, folder = train_experiment(plan, fold=0, data=train, output=work / 'model', budget='90s', quiet=True)
model = load_model(folder)
scan = new.img_path[0]
pred = model.predict(scan)
print(f"{Path(scan).name}: stored as {new.orientation[0]}, spacing {new.spacing[0]}; "
      f"{learn.experiment_info['epochs']} epochs, validation Dice {learn.experiment_info['final']}")
save_three_plane_png(scan, out, mask=pred, label_names={1: 'organ', 2: 'core'}, dpi=80,
                     title=f"automatic plan, unseen scan stored {new.orientation[0]} with {max(new.spacing[0]):g} mm slices: prediction on its own grid")
print(f"wrote {out}")
