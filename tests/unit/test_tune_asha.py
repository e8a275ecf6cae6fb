"""ASHA's rungs survive a restore: a scheduler rebuilt from the search's start (as
`Tuner.restore` unpickles it) judges the next trial against the values recorded before the
interruption, as the uninterrupted scheduler would. No Ray cluster: the scheduler's own calls."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from h2s_dist.train.tune_asha import PersistentASHA

ASHA = {"time_attr": "step", "max_t": 16, "grace_period": 4, "reduction_factor": 2}


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def _result(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss}


def test_a_restored_scheduler_keeps_its_rungs_and_stops_what_the_original_would(tmp_path):
    state = str(tmp_path / "asha_state.pkl")
    start = PersistentASHA(state, **ASHA)
    pickled_at_start = pickle.dumps(start)  # what tuner.pkl holds: the scheduler before any result

    start.set_search_properties("loss", "min")
    for trial_id, loss in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        start.on_trial_add(None, _trial(trial_id))
        start.on_trial_result(None, _trial(trial_id), _result(4, loss))

    restored = pickle.loads(pickled_at_start)
    restored.set_search_properties("loss", "min")  # Tune sets a restored search up again
    restored.on_trial_add(None, _trial("d"))
    # The rung at step 4 holds a, b, c: d's 2.5 is below the median cut, stopped ...
    assert restored.on_trial_result(None, _trial("d"), _result(4, 2.5)) == TrialScheduler.STOP

    # ... where an ASHA that forgot (the plain restore) has an empty rung and lets it pass.
    forgetful = pickle.loads(pickled_at_start)
    PersistentASHA.forget(state)
    forgetful.set_search_properties("loss", "min")
    forgetful.on_trial_add(None, _trial("d"))
    assert forgetful.on_trial_result(None, _trial("d"), _result(4, 2.5)) == TrialScheduler.CONTINUE
