"""Random body shapes: Anny phenotypes from anny's age-conditional distribution (WHO-calibrated heights and
weights), SMPL / MANO betas from N(0, 1)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

ADULT_AGE_YEARS = (18.0, 80.0)
WITH_CHILDREN_AGE_YEARS = (4.0, 80.0)


@lru_cache(maxsize=4)
def anny_distribution(body, children: bool):
    from anny.shape_distribution import SimpleShapeDistribution

    low, high = WITH_CHILDREN_AGE_YEARS if children else ADULT_AGE_YEARS
    kw = dict(dtype=body.anny.dtype, device=body.anny.device)
    age = torch.distributions.Uniform(torch.tensor(low, **kw), torch.tensor(high, **kw))
    return SimpleShapeDistribution(body.anny, morphological_age_distribution=age)


def sample_shape(body, rng: np.random.Generator, n: int, *, children: bool = False) -> np.ndarray:
    """(n, S) float32 shape vectors. Anny: phenotypes in [0, 1] for ages uniform in 18-80 years (4-80 with
    `children`), any sex, with heights, weights, muscle and proportions drawn as anny calibrated them; other
    models: betas ~ N(0, 1)."""
    if body.shape_bounds is None:
        return rng.normal(size=(n, body.shape_size)).astype(np.float32)
    distribution = anny_distribution(body, children)
    # anny samples with torch's global generator: seed a private copy of it from `rng` (reproducible, and the
    # caller's torch random state is left untouched).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**63 - 1)))
        _, phenotypes = distribution.sample(n)
    shape = torch.stack([phenotypes[name] for name in body.shape_names], dim=1)
    return shape.clamp(0.0, 1.0).numpy().astype(np.float32)
