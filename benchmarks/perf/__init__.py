"""Speed and memory benchmarks: models, input pipelines, the training loop, the optimizer."""
