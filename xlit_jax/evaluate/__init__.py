"""Evaluation: eval sets, scorers (language id, spelling, relevance, LLM judge, modifiers), reports; the
CrossAlpaca benchmarks scored as lm-evaluation-harness does (bench_run)."""

from xlit_jax.evaluate.bench_run import BenchConfig, BenchmarkEvaluation
from xlit_jax.evaluate.report import write_report
from xlit_jax.evaluate.run import EvalConfig, Evaluation, evaluate_model

__all__ = ["BenchConfig", "BenchmarkEvaluation", "EvalConfig", "Evaluation", "evaluate_model", "write_report"]
