"""The work of one job: the language-modelling cell, fine-tuning and prompt scoring, the training loop,
evaluation, measurement (FLOPs, memory, time, effective context), precisions and checkpoints."""
