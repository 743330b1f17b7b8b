"""rain's benchmarks, outside the core package (the core never imports them).

- ``rain_bench.speed``: what RAIN costs against plain decoding (``rain bench speed``).
- ``rain_bench.evaluator``: whether an evaluator can tell a harmful reply from a harmless one
  (``rain bench evaluator``).
- ``rain_bench.quality``: whether RAIN with an evaluator lowers harmful answers without refusing
  ordinary requests, as scored by a separate grader (``rain bench quality``).
- ``rain_bench.demo``: the first impression (``rain demo``).

Shared parts: ``harness`` (timing, peak memory, the machine), ``output`` (atomic report writes),
``datasets`` (the JSONL sets in ``rain_bench/data``), ``metrics``, ``grading`` (refusal detector,
keyword grader, the grader/evaluator separation rule), ``scorers`` and ``engines`` (building the
model, judge and evaluators a run names).
"""
