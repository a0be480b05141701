"""The jobs of fleetscore, each taking its dependencies explicitly (a `Context`, an executor), never a Fleet.

    context.py        Context: storage, catalog, settings, clock
    train.py          plan shards over the fleet's keys, fit each shard in a worker, commit a version
    tuning.py         what train fits when nothing is pinned
    retrain.py        models health; refit only the unhealthy models into a new version
    score.py          one scoring run: tasks per shard, records, commit of the window
    runs.py           the one road into scoring: lease-held score / resume / retry / cancel / backfill
    importing.py      file and table import with quarantine
    sklearn_import.py the one trusted unpickling step: a scikit-learn pipeline into array models
    quality.py        evaluate a run against labels
    gc.py             retention: what is old enough to delete, and what must be kept
"""
