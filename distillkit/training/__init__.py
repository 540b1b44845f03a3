"""The train stage's components: sampler (curriculum pools x domain mixture), the training loop,
checkpoints, DDK re-measurement, and torch.distributed helpers.

`pipelines/train.py` wires them together; each module can be used and tested on its own.
"""
