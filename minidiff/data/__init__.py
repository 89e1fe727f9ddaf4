"""Training data: datasets, duplicated subsets, captions and the tokenizer."""
