"""How fast llama.cpp runs a plan: one speed model (``model``), links (``links``), calibration data."""
