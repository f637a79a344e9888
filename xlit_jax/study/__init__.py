"""Studies: a grid of training runs and their evaluations run as one command, the paper's figures and
tables from its folder, and human evaluation sheets."""
