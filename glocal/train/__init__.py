"""Training: losses (HOW eq. 2, FIRe eq. 7-9); the ``tuples`` regime of ``glocal train`` (``data``: layouts,
``tuples``: mining and the contrastive loss, ``loop``: the seeded, resumable loop, ``export``: weights and model
card, ``session``: a run from a method spec); the detector's data and loop."""
from glocal.train.fire_losses import (
    FireLossConfig,
    FireLosses,
    attention_decorrelation_loss,
    contrastive_terms,
    fire_tuple_loss,
    global_contrastive_loss,
    select_super_feature_pairs,
    super_feature_loss,
)

__all__ = [
    "FireLossConfig", "FireLosses", "attention_decorrelation_loss", "contrastive_terms", "fire_tuple_loss",
    "global_contrastive_loss", "select_super_feature_pairs", "super_feature_loss",
]
