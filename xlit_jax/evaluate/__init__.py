"""Evaluation in two pipelines sharing one keyed score file (items) and one report (report):
instruction evaluation (instructions/: eval sets, scorers, judges) and CrossAlpaca's benchmarks scored as
lm-evaluation-harness does (harness/)."""

from xlit_jax.evaluate.harness.run import BenchConfig, BenchmarkEvaluation
from xlit_jax.evaluate.instructions.run import EvalConfig, Evaluation, evaluate_model
from xlit_jax.evaluate.report import write_report

__all__ = ["BenchConfig", "BenchmarkEvaluation", "EvalConfig", "Evaluation", "evaluate_model", "write_report"]
