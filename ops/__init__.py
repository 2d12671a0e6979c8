"""What runs in the cluster or on the CLI without the Pulumi SDK: the rollout decision service (paired
replay), the wave gate, the training pipeline's steps, workflow submission and the version proposal."""
