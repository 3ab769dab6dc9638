"""Evaluation: metrics, calibration, reports and plots, real-world and corruption scores, and the run pipeline."""
