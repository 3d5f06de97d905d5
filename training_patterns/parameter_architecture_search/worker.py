"""A T3 search worker: a plain process that runs trials of every running search.

Each replica polls `parameter_architecture_search_runs`, takes a trial slot (an atomic
UPDATE, so `max_trials` is exact across replicas and none is taken after the deadline) and
runs that one trial with `study.optimize(n_trials=1)` on the shared Optuna study, recording
its pid and instance name as user attributes. The worker that sees a search's budget spent
and every slot done wins its export: the best trial is refit, exported to ONNX with its
manifest under the run directory, measured on the held-out split and registered. A running
trial beats a heartbeat (Optuna's `heartbeat_interval`); when a worker dies mid-trial, its
trial is failed once silent for GRACE_S and the search ends without it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import Field

from patternkit import db, logs
from patternkit.models import OnnxModel, write_artifact
from patternkit.settings import ServiceSettings
from training_patterns.parameter_architecture_search import space as spaces
from training_patterns.parameter_architecture_search import store

log = logging.getLogger("search.worker")


class WorkerSettings(ServiceSettings):
    service_name: str = "worker"
    database_url: str = Field(..., description="runs, registry and Optuna's tables ({db.url})")
    models_dir: str = Field(..., description="where each search's best model is exported")
    poll_s: float = Field(0.2, gt=0, description="idle wait between looks for work")
    heartbeat_s: float = Field(2.0, gt=0, description="a running trial's heartbeat (Optuna)")
    grace_s: float = Field(10.0, gt=0, description="a trial without a heartbeat this long "
                           "(its worker died) is failed, so the search can end")


def derived_seed(seed: int, slot: int) -> int:
    """The sampler seed of one slot: a function of the search's seed and the slot alone, so
    a slot proposes the same point whichever worker runs it."""
    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


def sampler(strategy: str, seed: int, slot: int) -> Any:
    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=derived_seed(seed, slot))
    return optuna.samplers.TPESampler(seed=derived_seed(seed, slot), n_startup_trials=4,
                                      constant_liar=True)


def pruner(kind: str) -> Any:
    import optuna

    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spaces.FOLDS,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


class SearchWorker:
    """One worker process's loop over the runs table."""

    def __init__(self, cfg: WorkerSettings) -> None:
        self.cfg = cfg
        self.name = cfg.served_by
        self.engine = db.make_engine(cfg.database_url)
        db.create_tables(self.engine, store.METADATA)
        self.storage = store.storage(cfg.database_url, heartbeat_s=cfg.heartbeat_s,
                                     grace_s=cfg.grace_s)
        self.data = spaces.split()
        self.settled_at: dict[str, float] = {}  # search id -> last look for dead trials

    def run_trial(self, run: dict[str, Any], slot: int, claimed_at: float) -> None:
        import optuna

        X_train, _, y_train, _, _, _ = self.data
        study = optuna.load_study(
            study_name=store.study_name(run["id"]), storage=self.storage,
            sampler=sampler(run["strategy"], run["seed"], slot), pruner=pruner(run["pruner"]))

        def objective(trial: optuna.Trial) -> float:
            # the first beat now, not whenever Optuna's heartbeat thread first runs: a trial
            # that never beat is never failed as stale, so its search would wait for ever
            self.storage.record_heartbeat(trial._trial_id)
            trial.set_user_attr("worker", self.name)
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("slot", slot)
            trial.set_user_attr("claimed_at", claimed_at)
            return spaces.objective(trial, run["space"], run["seed"], X_train, y_train)

        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        finally:
            with self.engine.begin() as conn:
                store.slot_done(conn, run["id"])

    def export(self, run: dict[str, Any], reason: str) -> None:
        """Refit the best trial on the training split, export it, measure it, register it."""
        import optuna

        search_id = run["id"]
        try:
            trials = optuna.load_study(study_name=store.study_name(search_id),
                                       storage=self.storage).get_trials(deepcopy=False)
            best = store.best_of(trials)
            if best is None:
                raise RuntimeError(f"no trial completed before the search stopped ({reason})")
            X_train, X_test, y_train, y_test, features, classes = self.data
            params = dict(best.params)
            family = spaces.family_of(run["space"], params)
            model = spaces.build(run["space"], params, run["seed"]).fit(X_train, y_train)
            out = Path(self.cfg.models_dir) / search_id
            manifest = write_artifact(
                model, out, name=f"iris_{family}", version=f"search-{search_id[:8]}",
                features=features, classes=classes,
                metrics={"cv_accuracy": best.value},
                extra={"search_id": search_id, "trial_number": best.number,
                       "params": params, "family": family, "seed": run["seed"],
                       "dataset": spaces.DATASET})
            labels = OnnxModel(out).predict(X_test).labels  # what the predictor will serve
            test_accuracy = float(np.mean(labels == y_test))
            with self.engine.begin() as conn:
                store.register(conn, {
                    "search_id": search_id, "name": manifest["name"],
                    "version": manifest["version"], "path": str(out),
                    "sha256": manifest["sha256"], "trial_number": best.number,
                    "family": family, "params": params, "cv_accuracy": best.value,
                    "test_accuracy": test_accuracy, "n_test": len(y_test),
                    "registered_ts": time.time()})
                store.finish(conn, search_id)
            log.info("search %s done (%s): best trial %d %s cv=%.4f test=%.4f -> %s",
                     search_id[:8], reason, best.number, params, best.value, test_accuracy, out)
        except Exception as exc:  # the search records why it failed; the worker goes on
            log.exception("search %s export failed", search_id[:8])
            with self.engine.begin() as conn:
                store.finish(conn, search_id, error=f"{type(exc).__name__}: {exc}")

    def ended_trials(self, run: dict[str, Any], now: float) -> int:
        """How many of a spent search's trials ended, once its own workers stopped finishing
        slots: a trial whose worker died (no heartbeat for `grace_s`) is failed first, so a
        killed worker cannot hold the search open for ever. -1 when it is not time to look
        (at most once per heartbeat, only while a claimed slot is not done)."""
        import optuna

        spent = run["claimed"] >= run["max_trials"] or run["deadline_ts"] <= now
        due = now - self.settled_at.get(run["id"], 0.0) >= self.cfg.heartbeat_s
        if not spent or run["done"] >= run["claimed"] or not due:
            return -1
        self.settled_at[run["id"]] = now
        study = optuna.load_study(study_name=store.study_name(run["id"]), storage=self.storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        ended = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        if ended >= run["claimed"]:
            log.warning("search %s: %d of %d slots were never reported done: their worker "
                        "died; its trial failed without a heartbeat", run["id"][:8],
                        run["claimed"] - run["done"], run["claimed"])
        return ended

    def step(self) -> bool:
        """Do one piece of work (a trial or an export); False when there was none."""
        with self.engine.begin() as conn:
            runs = store.active_runs(conn)
        for run in runs:
            now = time.time()
            with self.engine.begin() as conn:
                slot = store.claim_slot(conn, run["id"], now)
            if slot is not None:
                self.run_trial(run, slot, now)
                return True
            ended = self.ended_trials(run, now)
            with self.engine.begin() as conn:
                reason = store.take_export(conn, run["id"], ended)
            if reason is not None:
                self.export(run, reason)
                return True
        return False

    def serve_forever(self) -> None:
        log.info("search worker %s ready (pid %d), polling %s", self.name, os.getpid(),
                 db.show_url(self.engine))
        while True:
            try:
                busy = self.step()
            except sa.exc.OperationalError as exc:  # database briefly unavailable or locked
                log.warning("database error, retrying: %s", exc)
                busy = False
            if not busy:
                time.sleep(self.cfg.poll_s)


def main() -> None:
    logs.configure(service="worker")
    SearchWorker(WorkerSettings()).serve_forever()


if __name__ == "__main__":
    main()
