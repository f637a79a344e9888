"""CrossAlpaca's benchmarks (XQuAD, MLQA, MMLU, BBH) scored as lm-evaluation-harness 0.4 does: data and
prompts (data), metrics (metrics), the resumable run (run)."""
