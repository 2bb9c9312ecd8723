"""Call a running LoRA Space with gradio_client: the README's examples as one script.

    python examples/client.py [URL]      # default http://127.0.0.1:7860/

In tiny mode (no GPU) the images are noise from a random test model; the calls are the same.
"""

from __future__ import annotations

import sys

from gradio_client import Client


def main(url: str) -> None:
    client = Client(url, verbose=False)

    # The local library (LORA_SPACE_LORA_DIR, the course's models/loras/).
    library = client.predict(api_name="/list_loras")
    for lora in library:
        print(f"{lora['name']:<30} {lora['format']:<10} trigger words: {', '.join(lora['trigger_words']) or '-'}")
    names = [lora["name"] for lora in library if lora["format"] != "invalid"]

    # Generate: prompt tags and slots blend LoRAs; each PNG carries its recipe.
    tag = f" <lora:{names[0]}:0.8>" if names else ""
    slots = [{"source": names[1], "strength": 0.6}] if len(names) > 1 else []
    result = client.predict(
        prompt=f"Portrait of a woman in a garden{tag}",
        loras=slots,
        seed=42,
        steps=2,
        width=64,
        height=64,
        api_name="/generate",
    )
    print("images:", result["images"])
    print("prompt as sent:", result["metadata"]["prompt"])

    # Strength sweep: where does a LoRA start to break?
    if names:
        sweep = client.predict(
            prompt="Portrait of a woman in a garden",
            x_source=names[0],
            x_strengths=[0, 0.4, 0.8, 1.2],
            seed=42,
            steps=2,
            width=64,
            height=64,
            api_name="/strength_sweep",
        )
        print("sweep grid:", sweep["grid"])

    # A portfolio: several prompts, one LoRA mix, zipped with each image's recipe.
    batch = client.predict(
        prompts=["Product showcase on marble", "Product on a beach at dusk"],
        loras=slots,
        seed=1,
        steps=2,
        width=64,
        height=64,
        api_name="/batch_generate",
    )
    print("portfolio zip:", batch["zip"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7860/")
