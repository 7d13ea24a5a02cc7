//! CUDA kernels of edgevit: CUDA C sources under `cuda/`, their launch
//! wrappers, and a CPU reference of every kernel. It holds no kernel yet.
