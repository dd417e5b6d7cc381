#!/usr/bin/env python3
"""torch-rechub on the same files as mtl: the peer side of `cargo xtask bench --peer`.

Driver (default): runs each (model, config) job in a subprocess of its own, so that peak RSS is
the job's, and appends one JSON line per job to --results (and prints it). A failed job gives
a line with "error". Worker (--worker): trains and measures one job.

A job is torch-rechub's own pipeline: DataGenerator(...).generate_dataloader(batch_size) and
MTLTrainer.train_one_epoch (Adam, lr, weight decay), --epochs epochs. Keys of a result line:

  train_sps_incl   rows / wall time of the training epochs
  train_sps_excl   rows / (wall time - time spent inside its DataLoader): the model's own speed
  infer_sps_excl   test rows / median of three forward passes over pre-built batches (eval mode)
  peak_rss_mb      peak resident memory of the job's process
  auc_ctr          CTR AUC on all test rows (MMOE, PLE, AITM: the click head)
  auc_cvr_clicked  CVR AUC on clicked test rows (MMOE, PLE, AITM: the purchase head)
  auc_ctcvr        CTCVR AUC on all test rows (MMOE, PLE, AITM: the purchase head, trained on
                   purchase over every impression as in torch-rechub's Ali-CCP example)
  es_cvr_spearman  rank correlation of the predicted pCVR with the true p_cvr on all test rows
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

# torch-rechub's Ali-CCP example (`example`) and the wider towers of mtl's `*-large` configs
CONFIGS = {
    "example": {
        "ESMM": {"ctr_params": {"dims": [16, 8]}, "cvr_params": {"dims": [16, 8]}},
        "MMOE": {"n_expert": 8, "expert_params": {"dims": [16]}, "tower_params_list": [{"dims": [8]}] * 2},
        "PLE": {"n_level": 1, "n_expert_specific": 2, "n_expert_shared": 1, "expert_params": {"dims": [16]},
                "tower_params_list": [{"dims": [8]}] * 2},
        "SharedBottom": {"bottom_params": {"dims": [117]}, "tower_params_list": [{"dims": [8]}] * 2},
        "AITM": {"n_task": 2, "bottom_params": {"dims": [32, 16]}, "tower_params_list": [{"dims": [8]}] * 2},
    },
    "large": {
        "ESMM": {"ctr_params": {"dims": [256, 128, 64]}, "cvr_params": {"dims": [256, 128, 64]}},
        "MMOE": {"n_expert": 8, "expert_params": {"dims": [256, 128]}, "tower_params_list": [{"dims": [64]}] * 2},
        "PLE": {"n_level": 1, "n_expert_specific": 2, "n_expert_shared": 1, "expert_params": {"dims": [256, 128]},
                "tower_params_list": [{"dims": [64]}] * 2},
        "SharedBottom": {"bottom_params": {"dims": [256, 128]}, "tower_params_list": [{"dims": [64]}] * 2},
        "AITM": {"n_task": 2, "bottom_params": {"dims": [256, 128]}, "tower_params_list": [{"dims": [64]}] * 2},
    },
}


class LoaderClock:
    """An iterable over a DataLoader that adds up the seconds spent waiting for its batches."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            yield batch


def worker(a):
    import numpy as np
    import pandas as pd
    import torch
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score
    import torch_rechub
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import AITM, ESMM, MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    meta = json.load(open(a.data + "_meta.json"))
    users = [f"u{k}" for k in range(len(meta["user_vocab"]))]
    items = [f"i{k}" for k in range(len(meta["item_vocab"]))]
    vocab = dict(zip(users + items, meta["user_vocab"] + meta["item_vocab"]))
    frames = {part: pd.read_csv(f"{a.data}_{part}.csv") for part in ("train", "val", "test")}
    # labels as torch-rechub's Ali-CCP example builds them: its "cvr" label is purchase over
    # every impression, which is click & purchase
    labels = {"ESMM": ["purchase", "click", "purchase"], "AITM": ["click", "purchase"]}.get(
        a.model, ["purchase", "click"])  # AITM: the funnel in order

    def split(df):
        # writable, contiguous copies: torch refuses negative strides and warns on read-only arrays
        x = {c: df[c].to_numpy(dtype=np.int64, copy=True) for c in users + items}
        return x, np.ascontiguousarray(df[labels].to_numpy(dtype=np.float32, copy=True))

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (split(frames[p]) for p in ("train", "val", "test"))
    feature = lambda c: SparseFeature(c, vocab[c], embed_dim=a.embed_dim)  # noqa: E731
    user_features, item_features = [feature(c) for c in users], [feature(c) for c in items]
    cfg = CONFIGS[a.config][a.model]
    if a.model == "ESMM":
        model, tasks = ESMM(user_features, item_features, **cfg), ["classification"] * 3
    elif a.model == "AITM":  # torch-rechub trains it without the calibrator
        model, tasks = AITM(user_features + item_features, **cfg), ["classification"] * 2
    else:
        tasks = ["classification"] * 2
        cls = {"MMOE": MMOE, "PLE": PLE, "SharedBottom": SharedBottom}[a.model]
        model = cls(user_features + item_features, tasks, **cfg)
    train_dl, val_dl, _ = DataGenerator(x_tr, y_tr).generate_dataloader(
        x_val=x_va, y_val=y_va, x_test=x_te, y_test=y_te, batch_size=a.batch)
    os.makedirs(a.scratch, exist_ok=True)
    trainer = MTLTrainer(model, task_types=tasks, optimizer_params={"lr": a.lr, "weight_decay": a.wd},
                         n_epoch=a.epochs, earlystop_patience=a.epochs + 1, device=a.device, model_path=a.scratch)
    val_batches = [{c: torch.from_numpy(x_va[c][s:s + a.infer_batch]).to(a.device) for c in users + items}
                   for s in range(0, len(y_va), a.infer_batch)]

    def validation_aucs():
        # after an epoch, outside the timed part: AUCs on the validation rows as mtl reports them
        model.eval()
        with torch.no_grad():
            pv = torch.cat([model(b) for b in val_batches]).cpu().numpy()
        model.train()
        vc, vp = frames["val"]["click"].values, frames["val"]["purchase"].values
        i_cvr, i_ctr, i_ctcvr = {"ESMM": (0, 1, 2), "AITM": (1, 0, 1)}.get(a.model, (0, 1, 0))
        return {"auc_ctr": round(roc_auc_score(vc, pv[:, i_ctr]), 5),
                "auc_cvr_clicked": round(roc_auc_score(vp[vc == 1], pv[vc == 1, i_cvr]), 5),
                "auc_ctcvr": round(roc_auc_score(vc * vp, pv[:, i_ctcvr]), 5)}

    wall = waited = 0.0
    val_by_epoch = []
    for _ in range(a.epochs):
        clock = LoaderClock(train_dl)
        started = time.perf_counter()
        trainer.train_one_epoch(clock)
        wall += time.perf_counter() - started
        waited += clock.seconds
        if a.epochs > 1:
            val_by_epoch.append(validation_aucs())
    rows = len(y_tr) * a.epochs

    model.eval()
    batches = [{c: torch.from_numpy(x_te[c][s:s + a.infer_batch]).to(a.device) for c in users + items}
               for s in range(0, len(y_te), a.infer_batch)]

    def predict():
        with torch.no_grad():
            out = torch.cat([model(b) for b in batches])
            if a.device != "cpu":
                torch.cuda.synchronize()
            return out.cpu().numpy()

    pred = predict()  # warm-up; these predictions are scored
    times = []
    for _ in range(3):
        started = time.perf_counter()
        predict()
        times.append(time.perf_counter() - started)
    test = frames["test"]
    click, purchase = test["click"].values, test["purchase"].values
    clicked = click == 1
    if a.model == "ESMM":  # outputs: cvr, ctr, ctcvr
        p_cvr, p_ctr, p_ctcvr = pred[:, 0], pred[:, 1], pred[:, 2]
    elif a.model == "AITM":  # outputs: click, purchase (the funnel's second step)
        p_ctr, p_cvr, p_ctcvr = pred[:, 0], pred[:, 1], pred[:, 1]
    else:  # heads: purchase over all impressions, click
        p_cvr, p_ctr, p_ctcvr = pred[:, 0], pred[:, 1], pred[:, 0]
    result = {
        "model": a.model, "config": a.config, "seed": a.seed, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "torch_rechub": getattr(torch_rechub, "__version__", "?"),
        "params_total": sum(p.numel() for p in model.parameters()),
        "n_train": len(y_tr), "n_test": len(y_te), "epochs": a.epochs, "batch": a.batch,
        "train_wall_s": round(wall, 3), "train_loader_s": round(waited, 3),
        "train_sps_incl": round(rows / wall, 1), "train_sps_excl": round(rows / (wall - waited), 1),
        "infer_sps_excl": round(len(y_te) / sorted(times)[1], 1),
        "auc_ctr": round(roc_auc_score(click, p_ctr), 5),
        "auc_cvr_clicked": round(roc_auc_score(purchase[clicked], p_cvr[clicked]), 5),
        "auc_ctcvr": round(roc_auc_score(click * purchase, p_ctcvr), 5),
        "es_cvr_spearman": round(float(spearmanr(p_cvr, test["p_cvr"].values)[0]), 5),
        "mean_pcvr": round(float(np.mean(p_cvr)), 5),
        "val_by_epoch": val_by_epoch,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    with open(a.result_file, "w") as f:
        f.write(json.dumps(result) + "\n")


def driver(a):
    os.makedirs(a.logdir, exist_ok=True)
    for config in a.configs.split(","):
        for model in a.models.split(","):
            tag = f"{model}_{config}_seed{a.seed}"
            result_file = os.path.join(a.logdir, tag + ".json")
            if os.path.exists(result_file):
                os.remove(result_file)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--config", config,
                   "--result-file", result_file, "--scratch", os.path.join(a.logdir, tag + ".scratch")]
            for key in ("data", "threads", "batch", "infer_batch", "epochs", "lr", "wd", "embed_dim", "seed", "device"):
                cmd += ["--" + key.replace("_", "-"), str(getattr(a, key))]
            started = time.time()
            with open(os.path.join(a.logdir, tag + ".log"), "w") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            if code == 0 and os.path.exists(result_file):
                result = json.loads(open(result_file).read())
                result["job_wall_s"] = round(time.time() - started, 1)
            else:
                result = {"model": model, "config": config, "seed": a.seed,
                          "error": f"exit code {code}, see {os.path.join(a.logdir, tag + '.log')}"}
            line = json.dumps(result)
            print(line, flush=True)
            with open(a.results, "a") as f:
                f.write(line + "\n")


def main():
    ap = argparse.ArgumentParser(description="torch-rechub on the same files as mtl")
    ap.add_argument("--data", required=True, help="prefix: <prefix>_{train,val,test}.csv and <prefix>_meta.json")
    ap.add_argument("--models", default="ESMM,MMOE,PLE,AITM")
    ap.add_argument("--configs", default="example,large")
    ap.add_argument("--results", default="peer-results.jsonl")
    ap.add_argument("--logdir", default="peer-logs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--infer-batch", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torch-rechub's MTLTrainer device)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--config")
    ap.add_argument("--result-file")
    ap.add_argument("--scratch", help="worker: where MTLTrainer may write its checkpoint")
    a = ap.parse_args()
    worker(a) if a.worker else driver(a)


if __name__ == "__main__":
    main()
