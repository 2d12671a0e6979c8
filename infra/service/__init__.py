"""The fraud-detection service of one region, split by concern: names (names, labels, URLs), workload (the
model server), network (policies), replay (the labelled-replay webhook), canary (Flagger), bluegreen (Argo
Rollouts) and component (:class:`FraudModelService`, which declares them all)."""
