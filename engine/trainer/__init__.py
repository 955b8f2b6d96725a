"""dpdeck's built-in LoRA trainer (SD1.5 / SDXL on diffusers + peft + DeepSpeed).

Runs only inside processes launched by `deepspeed ... -m engine.trainer`; this is the one place heavy
libraries (torch, diffusers, peft, deepspeed) are imported at module level.
"""
