"""Publishing a LoRA to the Hub: the model card (`card`), what is published (`bundle`) and the push (`publish`)."""
