"""QAT methods beyond uniform/LSQ, and the hooks that drive them (and the sparsifiers) during training.

Importing this package registers `gq`, `s8bqat` and `admm` in QUANTIZERS (quantizers.py imports it); they
build on `quant.weight_quantizers`. Sparsifiers live in `quant.sparsity`;
`methods.hooks.training_hooks(model, total_steps)` collects every method's loss terms and per-step
updates for `training.trainer.train`.
"""

from mpsearch.quant.methods import admm, gq, s8bqat  # noqa: F401  (importing registers them)
