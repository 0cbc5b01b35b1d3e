"""Scoring a trained model: inference, metrics, calibration, attention maps, figures."""
