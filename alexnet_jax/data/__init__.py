"""The data layer: where images come from, how the paper prepares them, and the batches a
train step receives. `input_pipeline.load(config)` is the entry point.

  sources         tfds builders by dataset name, and their splits (`builders`: ours)
  transforms      the paper's host-side image operations, the mean and PCA statistics
  batching        epoch order, rows per process, global arrays, eval batches, prefetch
  memory, stream  the two loaders (small fixed-size data in RAM; encoded images decoded
                  every step in parallel)
  input_pipeline  `load`: the loader that `data.pipeline` names
"""
