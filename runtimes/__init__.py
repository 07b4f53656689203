"""The stokehold serving runtime: a launcher around vLLM's OpenAI server, with Ray for multi-GPU."""
