"""The Pareto front on a hand-made set."""

from __future__ import annotations

import numpy as np

from reports.pareto import front_steps, pareto_mask


def test_pareto_front_on_a_hand_made_set():
    cost = [1.0, 2.0, 3.0, 2.5, 4.0, np.nan, 2.0]
    quality = [50.0, 55.0, 54.0, 58.0, 58.0, 60.0, 55.0]
    # 0: cheapest; 1/6 tie (neither strictly better: both kept); 2 dominated by 1; 3 best at 2.5;
    # 4 dominated by 3 (same quality, costlier); 5 has no cost: never on the front
    assert pareto_mask(cost, quality).tolist() == [True, True, False, True, False, False, True]
    x, y = front_steps(cost, quality)
    assert x.tolist() == [1.0, 2.0, 2.0, 2.5] and y.tolist() == [50.0, 55.0, 55.0, 58.0]
