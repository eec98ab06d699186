"""The paper's procedure: the run's set-up, the jitted steps, the optimizer, the loop,
evaluation, metrics, and step-0 checkpoints of weights trained elsewhere."""
