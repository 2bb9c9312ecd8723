"""LoRA Space: find, blend, train and publish FLUX LoRAs (the Space's entry point)."""

import lora_space.gpu  # first: `import spaces` must come before torch touches CUDA
from lora_space.ui import launch

if __name__ == "__main__":
    launch()
