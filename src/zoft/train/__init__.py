"""Fine-tuning: objective (model + batch -> loss), loop, checkpoints, metering."""
