"""The fraud-detection service of one region, split by concern: names (names, labels, URLs), workload (the
model server), network (policies), replay (the rollout decision service's Deployment), canary (Flagger), bluegreen (Argo
Rollouts) and component (:class:`FraudModelService`, which declares them all)."""
