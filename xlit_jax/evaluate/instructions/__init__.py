"""Instruction evaluation (Chirkova & Nikoulina): eval sets, greedy responses, the scorers (language,
spelling, relevance, the GPT-style judge, modifier fulfilment) behind one protocol (scorer.Scorer)."""
