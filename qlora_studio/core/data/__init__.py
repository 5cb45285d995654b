"""Training data: rows from files, chat templates, tokenized and analysed datasets."""
