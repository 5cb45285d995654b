"""One fine-tuning run: the recipe, its callbacks, the lean loss and optimizer, the probe."""
