"""ASHA whose rungs survive `Tuner.restore`.

Tune pickles the scheduler once, when the search starts (tuner.pkl), and `Tuner.restore`
unpickles that fresh copy: the ASHAScheduler's `save`/`restore` exist but Tune's controller
never calls them. A restored search would so forget every rung value recorded before the
interruption: trials that had finished are not run again, so their values never come back,
and the resumed trials would be judged against the few results seen since (or pass empty
rungs unchallenged).

`PersistentASHA` writes its state (ASHAScheduler.__dict__: brackets, rungs, trial ids) to
`state_uri` after every result it records, atomically (storage.write_bytes), and reads it
back when Tune sets it up again (`set_search_properties`, called at the start of a fresh and
of a restored search). A fresh search must not find an old file there: the tune stage deletes
it before building a new Tuner (`forget`).
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from h2s_dist.data import storage


class PersistentASHA(ASHAScheduler):
    def __init__(self, state_uri: str, **asha: Any):
        super().__init__(**asha)
        self.state_uri = state_uri

    def set_search_properties(self, metric, mode, **spec) -> bool:
        accepted = super().set_search_properties(metric, mode, **spec)
        if storage.exists(self.state_uri):
            self.__dict__.update(pickle.loads(storage.read_bytes(self.state_uri)))
        return accepted

    def on_trial_result(self, tune_controller, trial, result) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._save()

    def _save(self) -> None:
        storage.write_bytes(self.state_uri, pickle.dumps(self.__dict__))

    @staticmethod
    def forget(state_uri: str) -> None:
        """Delete a state left by an earlier search (before a fresh one starts)."""
        storage.delete(state_uri, missing_ok=True)
