"""llama.cpp itself: finding and building its binaries at the pinned version."""
