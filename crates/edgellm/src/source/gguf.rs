//! GGUF files (versions 2 and 3): header, metadata, tensor infos, memory-mapped tensor data.
