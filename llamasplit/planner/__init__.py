"""Estimator and planner: pure functions from (model, devices, settings) to memory and a Plan."""
