"""CrossAlpaca's benchmarks (XQuAD, MLQA, MMLU, BBH) scored as lm-evaluation-harness 0.4 does: data and
prompts (data), metrics (metrics), the resumable run (run). With lm-eval installed, the harness's own tasks
through our engine: an lm-eval LM (lm_eval_lm) and their resumable run into our item scores (lm_eval_tasks)."""
