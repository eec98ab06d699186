"""The paper's procedure: the run's set-up, the jitted steps, the optimizer, the loop, evaluation, metrics."""
