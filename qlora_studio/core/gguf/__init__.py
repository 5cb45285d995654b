"""GGUF exports for llama.cpp and Ollama: a LoRA adapter or a merged model in GGUF, and the
Ollama Modelfile that runs it."""
