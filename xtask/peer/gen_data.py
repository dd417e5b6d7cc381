#!/usr/bin/env python3
"""Synthetic click/conversion data shaped like Ali-CCP, for running mtl and torch-rechub on the
same files (`cargo xtask bench --peer`).

Writes <stem>_train.csv, <stem>_val.csv, <stem>_test.csv (80/10/10 of the rows, in order) and
<stem>_meta.json, where <stem> is --out without its .csv suffix. Columns:

    click, purchase      labels; purchase is 1 only on clicked rows
    u0..u9, i0..i9       user and item ids, already encoded, in [0, vocabulary)
    p_click, p_cvr       the true P(click) and P(purchase | click) of the row (p_cvr on every
                         row, so that entire-space CVR can be scored against the truth)

How rows are drawn (fixed by --seed): every field's ids follow a power law over a shuffled
vocabulary (a few ids are frequent, most are rare). Each id carries a random click effect and
a conversion effect correlated with it (RHO), and user and item fields carry small latent
vectors whose dot product adds a user x item interaction to both logits. The two intercepts
are found by bisection so that the mean click rate is CTR and the conversion rate among
clicks is CVR. Same seed, same bytes.
"""
import argparse
import json
import os

import numpy as np

USER_VOCAB = [100000, 50000, 20000, 5000, 1000, 500, 100, 50, 20, 10]
ITEM_VOCAB = [100000, 30000, 10000, 2000, 1000, 300, 100, 40, 20, 10]
POWER = 1.05  # id frequency ~ rank^-POWER
EFFECT_SD = 0.25  # sd of the per-id logit effects
RHO = 0.5  # correlation of an id's click and conversion effects
LATENT = 4  # width of the user x item interaction vectors
INTERACTION = 0.35  # weight of the interaction in each logit
CTR, CVR = 0.04, 0.05


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def power_law_ids(rng, vocab, n):
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -POWER
    ranks = rng.choice(vocab, size=n, p=weights / weights.sum())
    return rng.permutation(vocab)[ranks]


def intercept(mean_of, target):
    """The b with mean_of(b) == target, for mean_of increasing in b."""
    lo, hi = -30.0, 30.0
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_of(mid) < target else (lo, mid)
    return (lo + hi) / 2


def generate(rows, seed):
    rng = np.random.default_rng(seed)
    cols = {}
    z_click, z_cvr = np.zeros(rows), np.zeros(rows)
    side = {"u": [np.zeros((rows, LATENT)), np.zeros((rows, LATENT))],
            "i": [np.zeros((rows, LATENT)), np.zeros((rows, LATENT))]}
    other = np.sqrt(1 - RHO ** 2)
    for prefix, vocabs in (("u", USER_VOCAB), ("i", ITEM_VOCAB)):
        for k, vocab in enumerate(vocabs):
            ids = power_law_ids(rng, vocab, rows)
            cols[f"{prefix}{k}"] = ids
            click_effect = rng.normal(0, EFFECT_SD, vocab)
            cvr_effect = RHO * click_effect + other * rng.normal(0, EFFECT_SD, vocab)
            z_click += click_effect[ids]
            z_cvr += cvr_effect[ids]
            latent_click = rng.normal(0, 0.3, (vocab, LATENT))
            latent_cvr = RHO * latent_click + other * rng.normal(0, 0.3, (vocab, LATENT))
            side[prefix][0] += latent_click[ids]
            side[prefix][1] += latent_cvr[ids]
    z_click += INTERACTION * (side["u"][0] * side["i"][0]).sum(1)
    z_cvr += INTERACTION * (side["u"][1] * side["i"][1]).sum(1)
    b_click = intercept(lambda b: sigmoid(b + z_click).mean(), CTR)
    p_click = sigmoid(b_click + z_click)
    b_cvr = intercept(lambda b: (p_click * sigmoid(b + z_cvr)).sum() / p_click.sum(), CVR)
    p_cvr = sigmoid(b_cvr + z_cvr)
    click = (rng.random(rows) < p_click).astype(np.int64)
    purchase = click * (rng.random(rows) < p_cvr).astype(np.int64)
    return click, purchase, cols, p_click, p_cvr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--out", required=True, help="<dir>/<stem>.csv: files are <stem>_{train,val,test}.csv")
    a = ap.parse_args()
    if a.rows < 10:
        ap.error("--rows must be at least 10 (one row in each split)")
    click, purchase, cols, p_click, p_cvr = generate(a.rows, a.seed)
    stem = a.out[:-4] if a.out.endswith(".csv") else a.out
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    names = ["click", "purchase", *cols, "p_click", "p_cvr"]
    table = np.column_stack([click, purchase, *cols.values()]).astype(np.int64)
    n_train, n_val = int(a.rows * 0.8), int(a.rows * 0.1)
    meta = {"seed": a.seed, "rows": a.rows, "user_vocab": USER_VOCAB, "item_vocab": ITEM_VOCAB,
            "ctr": float(click.mean()), "cvr_given_click": float(purchase.sum() / max(click.sum(), 1))}
    for part, (lo, hi) in {"train": (0, n_train), "val": (n_train, n_train + n_val),
                           "test": (n_train + n_val, a.rows)}.items():
        with open(f"{stem}_{part}.csv", "w") as f:
            f.write(",".join(names) + "\n")
            for r in range(lo, hi):
                f.write(",".join(map(str, table[r])) + f",{p_click[r]:.6g},{p_cvr[r]:.6g}\n")
        meta[f"{part}_rows"] = hi - lo
        meta[f"{part}_clicks"] = int(click[lo:hi].sum())
        meta[f"{part}_purchases"] = int(purchase[lo:hi].sum())
    with open(f"{stem}_meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
