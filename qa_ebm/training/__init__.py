"""Trainers, schedules and checkpoints."""
