import os

# Triton decides between compiling and interpreting when a kernel is decorated, so the
# interpreter must be on before any kernel module is imported. On a CUDA machine set
# INFORM_FAST_TEST_GPU=1 to test the compiled kernels instead.
if os.environ.get("INFORM_FAST_TEST_GPU", "0") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
