"""Runner: launch llama.cpp with a plan, on one host or over RPC workers, and check it."""
