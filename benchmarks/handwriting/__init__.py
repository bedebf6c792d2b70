"""The real-handwriting evaluation set (issue 13, item 5): its generator and reader. Evaluation only."""
