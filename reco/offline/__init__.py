"""Offline learning: training examples and the training loop (`trainer`), leave-one-out evaluation (`evaluation`)."""
