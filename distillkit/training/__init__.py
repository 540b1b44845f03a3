"""The train stage's library: sampler (curriculum pools x domain mixture), the student with its loss,
the training loop over frozen `Settings`, `Components` and one `TrainState`, checkpoints, DDK
re-measurement, and torch.distributed helpers.

`distillkit/pipelines/train.py` is the recipe that wires them together; each module can be used and tested on its own.
"""
