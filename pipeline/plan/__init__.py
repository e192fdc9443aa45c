"""`agd plan`'s wing: the work every stage does for given params (work), what an experiment re-runs
(reruns), tables of per-pass times and memory (timings), the projection of one onto the other
(projection) and the measurement of a table on this machine (measure).

A wing of its own, above config and below the stages, so that no pipeline stage imports it: its
code is not a dependency of any stage in dvc.yaml, and editing a projection re-runs nothing."""
