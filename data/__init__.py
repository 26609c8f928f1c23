"""The built-in reasoning world: tasks, the pretraining corpus, the tokenizer, JSONL I/O."""
