"""Performance: throughput against the PyTorch reference, the paper's grid planned for pods, accelerators.
The scripts share workloads (what is measured) and common (how it is timed, printed and written)."""
