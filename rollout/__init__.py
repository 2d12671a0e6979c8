"""The rollout analysis, defined once for Flagger, Argo Rollouts and the local rehearsal (no Pulumi)."""
