"""Evaluation: eval sets, scorers (language id, spelling, relevance, LLM judge, modifiers), reports."""

from xlit_jax.evaluate.report import write_report
from xlit_jax.evaluate.run import EvalConfig, Evaluation, evaluate_model

__all__ = ["EvalConfig", "Evaluation", "evaluate_model", "write_report"]
