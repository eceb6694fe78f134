"""The model leaves the project and others come in: Hugging Face transformers checkpoints (hf.py: import and
export) and GGUF files for llama.cpp and Ollama (gguf.py: export)."""
