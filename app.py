"""LoRA Space: find, blend, train and publish FLUX LoRAs (the Space's entry point)."""

import lora_space.gpu  # first: `import spaces` must come before torch touches CUDA

lora_space.gpu.hide_cuda_only_packages()  # on a CPU: bitsandbytes and torchao unused, and slow to import
from lora_space.ui import launch  # noqa: E402

if __name__ == "__main__":
    launch()
