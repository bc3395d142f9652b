"""Search quality on galaxies the aligner trained on against galaxies it never saw.

The aligner learns from (image, caption) pairs of the caption sample, and the evaluation
searches the whole survey, caption sample included. A galaxy whose own caption was a training
pair can rank well because the aligner remembers that pair rather than because it generalises;
in a real survey almost every galaxy is outside the caption sample (the AION-Search paper
captioned 0.2% of what it indexes), while the default mock demo captions two galaxies in three.

:func:`caption_split` scores one ranking twice: among the labelled galaxies *without* a
training caption, and among those *with* one. nDCG@k depends on how many galaxies compete
(a larger candidate set holds more near-ideal galaxies for both the ranking and the ideal), so
the larger group is subsampled to the size of the smaller one, ``n_draws`` times, and its mean
and spread over draws are reported. A figure without captions well below the one with captions
says the aligner's quality on this survey partly comes from memorised pairs.

"With a training caption" means the aligner trained on the galaxy's pair. Training holds out
a validation share of the captioned galaxies (``TrainConfig.val_fraction``, at least
``min_validation``), which it never trains on; :func:`training_split` recomputes that split
with the aligner's own settings, so that those galaxies count as without a training caption.
(With ``select_by`` ``caption_loss`` or ``view_loss`` their loss chose the kept checkpoint;
with the default ``last`` they play no part in the model.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from galaxy_assets.evaluation.labels import TargetLabels
from galaxy_assets.evaluation.metrics import finite_mean, ndcg

__all__ = ["CAPTION_SPLIT_DRAWS", "MIN_GROUP", "caption_split", "training_split"]

CAPTION_SPLIT_DRAWS = 50  # subsamples of the larger group
MIN_GROUP = 20  # fewer labelled galaxies in either group: no comparison


def training_split(
    caption_ids: Iterable[str],
    image_ids: Iterable[str] | None = None,
    *,
    val_fraction: float,
    min_validation: int,
    salt: str,
) -> tuple[list[str], list[str]]:
    """(training, validation) object_ids of the aligner's pairs, sorted.

    The pairs are the captioned galaxies (``caption_ids``) that have an image vector
    (``image_ids``; None: all of them), split as
    :func:`~galaxy_assets.alignment.train.train_on_pairs` splits them:
    :func:`~galaxy_assets.alignment.data.split_by_object` with the training run's
    ``val_fraction``, ``min_validation`` and ``split_salt``. A galaxy's side depends on its id
    alone unless the hash share falls short of ``min_validation``; captions or vectors that
    changed since training (or were unusable to it) can then move a few galaxies.
    """
    from galaxy_assets.alignment.data import split_by_object

    ids = np.unique(np.asarray([str(o) for o in caption_ids], dtype=str))
    if image_ids is not None:
        ids = ids[np.isin(ids, np.asarray([str(o) for o in image_ids], dtype=str))]
    if ids.size == 0:
        return [], []
    is_val = split_by_object(ids, val_fraction, min_validation=min_validation, salt=salt)
    return ids[~is_val].tolist(), ids[is_val].tolist()


def _group_score(
    labels: TargetLabels, ranked: np.ndarray, member: np.ndarray, k: int
) -> tuple[float, float | None]:
    """(nDCG@k of ``ranked`` among the candidates in ``member``, that set's label ceiling)."""
    sub = ranked[member[ranked]]
    value = ndcg(labels.relevance[sub], labels.relevance[member], k)
    ceiling = labels.restrict(labels.object_ids[member].tolist()).label_ceiling(k)
    return value, ceiling


def _std(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite)) if len(finite) > 1 else None


def _side(
    labels: TargetLabels,
    ranked: np.ndarray,
    group: np.ndarray,
    size: int,
    k: int,
    rng: np.random.Generator,
    n_draws: int,
) -> dict[str, Any]:
    members = np.flatnonzero(group)
    if members.size == size:
        value, ceiling = _group_score(labels, ranked, group, k)
        return {"ndcg": value, "std": None, "ceiling": ceiling, "draws": 0}
    values, ceilings = [], []
    for _ in range(n_draws):
        mask = np.zeros(labels.n_candidates, dtype=bool)
        mask[rng.choice(members, size, replace=False)] = True
        value, ceiling = _group_score(labels, ranked, mask, k)
        values.append(value)
        ceilings.append(ceiling)
    known = [c for c in ceilings if c is not None]
    return {
        "ndcg": finite_mean(values),
        "std": _std(values),
        "ceiling": finite_mean(known) if known else None,
        "draws": n_draws,
    }


def caption_split(
    labels: TargetLabels,
    ranked: np.ndarray,
    captioned_ids: set[str],
    *,
    k: int = 10,
    n_draws: int = CAPTION_SPLIT_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """nDCG@k of a ranking among the labelled galaxies without and with a training caption.

    ``ranked``: the ranking as positions in ``labels``' candidate set, best first (as
    :func:`~galaxy_assets.evaluation.metrics.ranked_indices` gives), holding every candidate:
    a group's best galaxies may lie anywhere in it. ``captioned_ids``: the
    object_ids whose captions trained the aligner. Both groups are scored on ``size`` galaxies,
    the smaller group's count: the smaller group whole, the larger one over ``n_draws`` seeded
    subsamples (mean, and standard deviation over draws). Returns a dict with ``n_uncaptioned``,
    ``n_captioned``, ``size`` and, when both groups hold at least :data:`MIN_GROUP` galaxies
    and something relevant, ``uncaptioned`` and ``captioned`` (each ``ndcg``, ``std`` or None,
    ``ceiling`` or None, ``draws``) and ``difference`` (without minus with); otherwise
    ``reason`` says why there is no comparison.
    """
    captioned = np.fromiter(
        (o in captioned_ids for o in labels.object_ids.tolist()),
        dtype=bool,
        count=labels.n_candidates,
    )
    n_cap, n_unc = int(captioned.sum()), int((~captioned).sum())
    out: dict[str, Any] = {"k": k, "n_uncaptioned": n_unc, "n_captioned": n_cap}
    size = min(n_cap, n_unc)
    out["size"] = size
    if size < MIN_GROUP:
        which = "with" if n_cap < n_unc else "without"
        out["reason"] = (
            f"only {size} labelled galaxies {which} a training caption (at least {MIN_GROUP} "
            "needed)"
        )
        return out
    ranked = np.asarray(ranked, dtype=np.int64)
    present = np.zeros(labels.n_candidates, dtype=bool)
    present[ranked] = True
    if not present.all():
        # a subset's top k may lie anywhere in the whole ranking: a truncated one would score
        # its missing galaxies as ranked last
        out["reason"] = (
            f"the ranking holds {int(present.sum())} of the {labels.n_candidates} labelled "
            "galaxies; the caption split needs every one ranked"
        )
        return out
    rng = np.random.default_rng(seed)
    unc = _side(labels, ranked, ~captioned, size, k, rng, n_draws)
    cap = _side(labels, ranked, captioned, size, k, rng, n_draws)
    if not (math.isfinite(unc["ndcg"]) and math.isfinite(cap["ndcg"])):
        out["reason"] = "a group holds no relevant galaxy: nDCG is undefined"
        return out
    out.update(uncaptioned=unc, captioned=cap, difference=unc["ndcg"] - cap["ndcg"])
    return out
