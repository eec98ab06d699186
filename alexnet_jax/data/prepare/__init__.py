"""Preparing a dataset once: from its source files (the ImageNet tars, a folder, idx files) to
the tfds dataset on disk that training reads, in parallel and resumable where it is large,
without TensorFlow, with progress, disk checks and a clean stop."""
